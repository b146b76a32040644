"""The dashboard the operator serves (kubemap.pages over what the operator already knows):
`source.py` reads its watches and its dispatcher, `handlers.py` starts it with the operator.
It sits over the WorkerPool controller (it reads the dispatcher's workers) and below the
registry that composes the controllers."""
