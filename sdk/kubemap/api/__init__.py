"""What users call: map, submit, MapRun, streaming, the result cache, Executor, joblib, WorkerPool."""
