"""Pure decisions shared by every backend: no I/O, no Kubernetes, no boto3."""
