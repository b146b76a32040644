"""The run engine's pure core: no I/O, no boto3, no Kubernetes client, no kopf.

Where each decision lives:
  ranges.py   sets of indices as compressed ranges ("0-3,7")
  policy.py   retries, backoff, failure classes (exit codes, pod causes), the failure budget
  plan.py     plan(): given what was recorded and what attempts are observed, what to start,
              what to record, and the verdict; every backend executes it
  status.py   Phase, Reason and run_status(): a task's recorded state -> what users see
"""
