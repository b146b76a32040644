"""The kubemap operator: kopf handlers over a pure reconcile core."""
