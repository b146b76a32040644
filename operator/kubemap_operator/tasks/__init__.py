"""The MapTask controller: reconcile, pod builder, observe, finishing, rerun, kept logs, file listing."""
