"""`packages` of a WorkerPool or a pool task: which pip requirement strings the specs accept.

Checked where a spec is made (the models), installed inside the pool's workers
(kubemap.runtime.packages).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_PACKAGES = 64
MAX_REQUIREMENT = 200
# A requirement as pip takes it ("pandas==2.2.*", "tomli_w", "foo[bar]>=1; python_version>'3'"),
# never an option: "--index-url ..." in a spec must not steer pip somewhere else.
_REQUIREMENT = re.compile(r"^[A-Za-z0-9][^\s\\]*(\s*[;<>=!~,\[\]][^\\\n\r]*)?$")


def check_packages(packages: Iterable[str], *, where: str = "packages") -> list[str]:
    """The packages, validated: a short error naming the bad entry and what to do."""
    out = [str(p).strip() for p in packages]
    if len(out) > MAX_PACKAGES:
        raise ValueError(
            f"{where}: {len(out)} packages, at most {MAX_PACKAGES}: bake them into an image"
        )
    for p in out:
        if not p or len(p) > MAX_REQUIREMENT or not _REQUIREMENT.match(p):
            raise ValueError(
                f"{where}: {p!r} is not a pip requirement (e.g. 'pandas==2.2.*'); options such "
                "as --index-url belong in the pool's env (PIP_INDEX_URL), not in packages"
            )
    return out


def check_task_packages(packages: list[str], pool: str | None) -> None:
    """Runtime packages are installed by warm pool workers; pods and local runs do not."""
    if pool is None:
        raise ValueError(
            "packages= is installed by warm pool workers: run with backend='kubernetes', "
            "pool=<name>, or bake the packages into image= (locally: pip install them)"
        )
    check_packages(packages)
