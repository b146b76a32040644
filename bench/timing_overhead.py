"""What timing records cost (issue 22): the same 10,000 x 10 ms task with and without them.

    .venv/bin/python bench/timing_overhead.py                     # local backend
    eval "$(tests/cluster/testcluster env)"                       # and, with a cluster:
    .venv/bin/python bench/timing_overhead.py --pool --workers 4  # warm pools too

Every slice run writes one timing record (kubemap.task.timings) unless its worker's
environment says KUBEMAP_TIMINGS=0: only this bench sets that. How the runs alternate and what
the ratio means: bench/switchbench.py. Target: within 2 %.
"""

from __future__ import annotations

import time

from kubemap.task.timings import ENV_TIMINGS, TIMINGS_PREFIX
from switchbench import Switch, main

ITEM_SECONDS = 0.01


def sleepy(x: int) -> int:
    time.sleep(ITEM_SECONDS)
    return x


if __name__ == "__main__":
    main(Switch("recording", ENV_TIMINGS, TIMINGS_PREFIX, sleepy), __doc__.split("\n")[0])
