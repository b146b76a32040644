"""The typed shapes at the edges: the MapTask and WorkerPool resources, their CRDs, the run options, the worker's termination message."""
