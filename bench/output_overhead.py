"""What keeping the workers' output costs (issue 22 item 3): the same 10,000 x 10 ms task,
each item printing a line, with and without capture.

    .venv/bin/python bench/output_overhead.py                     # local backend
    eval "$(tests/cluster/testcluster env)"                       # and, with a cluster:
    .venv/bin/python bench/output_overhead.py --pool --workers 4  # warm pools too

Each item's output is caught at the file-descriptor level, echoed, and kept in one object per
slice (kubemap.task.output) unless the worker's environment says KUBEMAP_KEEP_OUTPUT=0: only
this bench sets that. How the runs alternate and what the ratio means: bench/switchbench.py;
the local line also gives the objects and bytes one run keeps. The items' echoed lines go to
/dev/null (this process's stdout is not the workers').
"""

from __future__ import annotations

import time

from kubemap.task.output import ENV_KEEP_OUTPUT, OUTPUT_PREFIX
from switchbench import Switch, main

ITEM_SECONDS = 0.01


def sleepy(x: int) -> int:
    time.sleep(ITEM_SECONDS)
    print(f"item {x}: done")
    return x


if __name__ == "__main__":
    main(Switch("keeping", ENV_KEEP_OUTPUT, OUTPUT_PREFIX, sleepy), __doc__.split("\n")[0])
