"""A remote failure is an exception (issue 18, item 4): return_exceptions=True puts one in
each failed place, as asyncio.gather does; `except TheUsersOwnError:` catches it when that
class is importable here (as Ray's RayTaskError does); it pickles and compares equal."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import kubemap
import pytest

pytestmark = pytest.mark.timeout(120)


class ScoringError(Exception):
    """The user's own error class, importable here (this module)."""


class NeedsTwo(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def score(x: int) -> int:
    if x % 4 == 1:
        raise ScoringError(f"cannot score {x}")
    if x % 4 == 2:
        raise KeyError(x)
    if x % 4 == 3:
        raise NeedsTwo(x, "two arguments")
    return x * 10


def test_return_exceptions_gives_exceptions_that_keep_their_record(tmp_path: Path) -> None:
    values = kubemap.map(score, range(8), return_exceptions=True, store=str(tmp_path))
    failed = {i: v for i, v in enumerate(values) if isinstance(v, Exception)}
    assert sorted(failed) == [1, 2, 3, 5, 6, 7]
    assert [values[0], values[4]] == [0, 40]
    for index, error in failed.items():
        assert isinstance(error, kubemap.RemoteError) and isinstance(error, kubemap.KubemapError)
        assert error.index == index and error.attempts == 1
        assert error.type == ("ScoringError", "KeyError", "NeedsTwo")[index % 4 - 1]
        assert f"raise {error.type}" in error.traceback
    assert values[1].message == "cannot score 1"
    assert pickle.loads(pickle.dumps(values[1])) == values[1]
    assert type(pickle.loads(pickle.dumps(values[1]))) is type(values[1])


def test_except_the_users_own_class_catches_the_remote_failure(tmp_path: Path) -> None:
    values = kubemap.map(score, range(4), return_exceptions=True, store=str(tmp_path))
    caught = []
    for value in values[1:]:
        try:
            raise value
        except ScoringError as exc:
            caught.append(("ScoringError", exc.index))
        except KeyError as exc:
            caught.append(("KeyError", exc.index))  # type: ignore[attr-defined]
        except NeedsTwo as exc:
            caught.append(("NeedsTwo", exc.index))  # type: ignore[attr-defined]
    assert caught == [("ScoringError", 1), ("KeyError", 2), ("NeedsTwo", 3)]
    with pytest.raises(kubemap.MapTaskError) as info:
        kubemap.map(score, range(4), store=str(tmp_path), parallelism=1)
    assert all(isinstance(e, kubemap.RemoteError) for e in info.value.failures.values())
    assert isinstance(info.value.failures[1], ScoringError)


def test_a_class_that_is_not_importable_here_falls_back_to_remote_error() -> None:
    record = {
        "index": 3,
        "type": "Gone",
        "message": "m",
        "traceback": "tb",
        "class": "no_such_module_here:Gone",
    }
    error = kubemap.RemoteError.from_record(record)
    assert type(error) is kubemap.RemoteError and isinstance(error, Exception)
    assert (error.index, error.type, error.message, error.traceback) == (3, "Gone", "m", "tb")
    unsubclassable = {**record, "type": "bool", "class": "builtins:bool"}  # not an exception
    assert type(kubemap.RemoteError.from_record(unsubclassable)) is kubemap.RemoteError


SCRIPT = """
import kubemap, sys

class Oops(Exception):
    pass

def f(x):
    if x == 2:
        raise Oops(f"bad {x}")
    return x

values = kubemap.map(f, range(4), return_exceptions=True, store=sys.argv[1])
print([isinstance(v, Exception) for v in values])
try:
    raise values[2]
except Oops as exc:
    print("caught", type(exc).__name__, exc.index)
raise values[2]
"""


def test_raise_shows_the_remote_traceback_in_a_script(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "[False, False, True, False]",
        "caught RemoteError(Oops) 2",
    ]
    # what Python prints for `raise values[2]`: the remote frame and its line, then ours
    assert 'raise Oops(f"bad {x}")' in done.stderr, done.stderr
    assert "index 2: Oops: bad 2" in done.stderr.splitlines()[-1]


def test_reading_a_failure_imports_no_library_afresh() -> None:
    import subprocess as sp

    code = (
        "import sys, kubemap\n"
        "e = kubemap.RemoteError.from_record({'index': 0, 'type': 'Boom', 'message': 'm',"
        " 'class': 'xml.dom.minidom:Boom'})\n"
        "print(type(e).__name__, 'xml' in sys.modules)\n"
    )
    done = sp.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["RemoteError", "False"], done.stderr
