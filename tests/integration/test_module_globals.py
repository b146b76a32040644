"""What warm local workers see of module globals, as the README states it (issue 18, item
22): the user's own modules travel by value with each call, so a global changed before a
call is seen; installed and standard-library modules are imported by the workers, so state
changed in the caller after the workers started is not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
README = Path(__file__).resolve().parents[2] / "docs" / "guides" / "local.md"  # the docs say it now

SCRIPT = """
import json, kubemap, usermod
store = {store!r}
seen = {{}}
seen["own, before"] = kubemap.map(usermod.scaled, [1], store=store)[0]
usermod.FACTOR = 3
usermod.CONFIG["k"] = 5
seen["own, after"] = kubemap.map(usermod.scaled, [1], store=store)[0]
seen["own dict, after"] = kubemap.map(usermod.configured, [1], store=store)[0]
seen["worker's change"] = kubemap.map(usermod.bump, [1], store=store)[0]
seen["caller after it"] = usermod.FACTOR
seen["installed, before"] = kubemap.map(json.dumps, [[1, 2]], store=store)[0]
json._default_encoder = json.JSONEncoder(separators=(",", ":"))  # changed here only
seen["installed, after"] = kubemap.map(json.dumps, [[1, 2]], store=store)[0]
seen["installed, here"] = json.dumps([1, 2])
print("SEEN=" + json.dumps(seen))
"""


def test_what_warm_workers_see_of_module_globals_is_what_the_readme_says(tmp_path: Path) -> None:
    (tmp_path / "usermod.py").write_text(
        "FACTOR = 2\nCONFIG = {'k': 1}\n"
        "def scaled(x):\n    return x * FACTOR\n"
        "def configured(x):\n    return CONFIG['k']\n"
        "def bump(x):\n    global FACTOR\n    FACTOR += 100\n    return FACTOR\n"
    )
    (tmp_path / "main.py").write_text(SCRIPT.format(store=str(tmp_path / "store")))
    done = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.split("SEEN=")[1])
    # The user's own module: pickled by value at each call, so the new values are seen...
    assert (seen["own, before"], seen["own, after"], seen["own dict, after"]) == (2, 3, 5)
    # ...and a change the function makes in a worker stays there.
    assert (seen["worker's change"], seen["caller after it"]) == (103, 3)
    # An installed (here: standard-library) module: the warm workers imported their own.
    assert seen["installed, here"] == "[1,2]"
    assert seen["installed, before"] == seen["installed, after"] == "[1, 2]"

    text = " ".join(README.read_text().split())
    assert "module globals changed after they started are not seen;" not in text
    assert "pickled by value" in text and "imported by the workers" in text
