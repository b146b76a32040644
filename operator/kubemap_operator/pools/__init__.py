"""Warm worker pools: the WorkerPool reconcile, its pod builder, and the lease dispatcher."""
