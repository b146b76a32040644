"""`python -m kubemap.worker`: the command of function-mode pods, as the MapTask CRD documents it.

The worker itself is kubemap.runtime.worker; this module is only the documented entry point,
so that images and `spec.template.command` written against the CRD keep working.
"""

import sys

from kubemap.runtime.worker import main

if __name__ == "__main__":
    sys.exit(main())
