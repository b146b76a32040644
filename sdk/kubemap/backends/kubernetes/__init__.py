"""The Kubernetes backend: a run is a MapTask (or a WorkerPool task) reconciled by the operator."""
