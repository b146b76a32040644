"""What runs inside pods: the function worker, the WorkerPool worker, file transfer, runtime packages."""
