"""The CLI without running a task: input parsing (table-driven), loading MODULE:FUNCTION, help."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kubemap.cli.inputs import parse_inputs
from kubemap.cli.main import load_function, main
from kubemap.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("", "auto", []),
        ("\n\n", "auto", []),
        ("1\n2\n3\n", "auto", [1, 2, 3]),
        ('{"a": 1}\n\n{"a": 2}\n', "auto", [{"a": 1}, {"a": 2}]),
        ('"x"\n[1, 2]\nnull\n', "auto", ["x", [1, 2], None]),
        ("[1, 2, 3]", "auto", [1, 2, 3]),
        ('[\n  "a",\n  "b"\n]\n', "auto", ["a", "b"]),
        ("hello\nworld\n", "auto", ["hello", "world"]),
        # Text lines: every line is an item, blank ones too, so results line up with lines.
        ("hello world\r\n\r\nbye\r\n", "auto", ["hello world", "", "bye"]),
        ("\n\nhello\n\n", "auto", ["", "", "hello", ""]),
        ("1\n2\n", "lines", ["1", "2"]),
        ("a\n\n  \nb\n", "lines", ["a", "", "  ", "b"]),
        ("\n\n", "lines", ["", ""]),
        ("[1]\n[2]\n", "jsonl", [[1], [2]]),
        ("[1, 2]", "json", [1, 2]),
        ("\n\n3\n4", "auto", [3, 4]),
    ],
)
def test_parse_inputs(text: str, fmt: Any, expected: list[Any]) -> None:
    assert list(parse_inputs(io.StringIO(text), fmt)) == expected


@pytest.mark.parametrize(
    ("text", "fmt", "must_mention"),
    [
        ("1\nfoo\n", "auto", ["line 2", "--format lines"]),
        ("\n1\n\nfoo\n", "auto", ["line 4"]),
        ("[1, 2", "auto", ["not a valid JSON array"]),
        ('{"a": 1}', "json", ["JSON dict, not an array"]),
        ("x", "jsonl", ["line 1"]),
        ("1", "yaml", ["unknown input format"]),
    ],
)
def test_parse_inputs_errors(text: str, fmt: Any, must_mention: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        list(parse_inputs(io.StringIO(text), fmt, source="in.txt"))
    for part in must_mention:
        assert part in str(info.value)


def test_parse_inputs_streams_line_formats() -> None:
    class OneShot(io.StringIO):
        def read(self, *args: Any) -> str:  # pragma: no cover - must not be called
            raise AssertionError("line formats must not read the whole stream")

    items = parse_inputs(OneShot("1\n2\n" * 1000), "auto")
    assert next(items) == 1 and next(items) == 2


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "clitasks_mod.py").write_text("def double(x):\n    return 2 * x\nVALUE = 3\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "filetask.py").write_text(
        "class Ops:\n    @staticmethod\n    def neg(x):\n        return -x\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


@pytest.mark.parametrize(
    ("target", "arg", "expected"),
    [
        ("clitasks_mod:double", 4, 8),
        ("sub/filetask.py:Ops.neg", 5, -5),
        ("os.path:basename", "/a/b", "b"),
    ],
)
def test_load_function(module_dir: Path, target: str, arg: Any, expected: Any) -> None:
    assert load_function(target)(arg) == expected


@pytest.mark.parametrize(
    ("target", "must_mention"),
    [
        ("clitasks_mod", "expected MODULE:FUNCTION"),
        ("nosuchmodule_xyz:f", "no module named 'nosuchmodule_xyz'"),
        ("clitasks_mod:missing", "has no 'missing'"),
        ("clitasks_mod:VALUE", "not a function"),
        ("nofile.py:f", "no such file"),
    ],
)
def test_load_function_errors(module_dir: Path, target: str, must_mention: str) -> None:
    with pytest.raises(ConfigError, match=must_mention):
        load_function(target)


def test_help_reads_well() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Map a Python function over a list of inputs" in result.output
    assert "kubemap run" in result.output and "Examples" in result.output
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--inputs", "--parallelism", "--retries", "--backend", "--store", "--output"):
        assert option in result.output
    assert "blank lines too" in " ".join(result.output.split())  # --format lines keeps them


@pytest.mark.parametrize(
    ("args", "must_mention"),
    [
        (["run", "nope", "--inputs", "-"], "expected MODULE:FUNCTION"),
        (["run", "os.path:basename", "--inputs", "/no/such/file"], "cannot read inputs"),
        (["run", "os.path:basename", "--inputs", "-", "--parallelism", "0"], "parallelism=0"),
        (["run", "os.path:basename", "--inputs", "-", "--backend", "x"], "'x' is not one of"),
    ],
)
def test_usage_errors_are_clean(args: list[str], must_mention: str) -> None:
    result = CliRunner().invoke(main, args, input="1\n")
    assert result.exit_code == 2
    assert must_mention in result.output
    assert "Traceback" not in result.output


def test_run_takes_env_and_resources_which_are_kubernetes_options() -> None:
    help_text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    assert "--env KEY=VALUE" in help_text and "--resources" in help_text
    for extra in (["--env", "A=1"], ["--resources", "cpu=1,memory=2Gi"], ["--image", "x:1"]):
        result = CliRunner().invoke(
            main, ["run", "os.path:basename", "-i", "-", *extra], input="a\n"
        )
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())
        assert f"{extra[0]} is a Kubernetes option" in said and "--backend kubernetes" in said
        assert 'backend="kubernetes"' not in said and "Traceback" not in said


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--env", "A=1", "--env", "B=x=y"], {"env": {"A": "1", "B": "x=y"}}),
        (
            ["--resources", "cpu=1,memory=2Gi"],
            {"resources": {"requests": {"cpu": "1", "memory": "2Gi"}}},
        ),
        (
            ["--resources", '{"limits": {"memory": "1Gi"}}'],
            {"resources": {"limits": {"memory": "1Gi"}}},
        ),
        (["--no-speculation"], {"speculation": False}),
        (["--speculation"], {"speculation": True}),
    ],
)
def test_env_and_resources_reach_the_sdk_as_its_options(
    args: list[str], expected: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_submit(fn: Any, items: Any, **options: Any) -> Any:
        seen.update(options)
        raise SystemExit(0)

    monkeypatch.setattr("kubemap.api.submit.submit", fake_submit)
    result = CliRunner().invoke(
        main, ["run", "os.path:basename", "-i", "-", "--backend", "kubernetes", *args], input="a\n"
    )
    assert result.exit_code == 0, result.output
    assert {key: seen[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("args", "must_mention"),
    [
        (["--env", "NOEQUALS"], "--env expects KEY=VALUE"),
        (["--resources", "cpu"], "--resources expects"),
        (["--resources", "{not json"], "--resources expects"),
    ],
)
def test_bad_env_and_resources_are_usage_errors(args: list[str], must_mention: str) -> None:
    result = CliRunner().invoke(
        main, ["run", "os.path:basename", "-i", "-", "--backend", "kubernetes", *args], input="a\n"
    )
    assert result.exit_code == 2 and must_mention in result.output, result.output


def test_every_command_has_help_and_the_top_says_which_need_a_cluster() -> None:
    def commands(group: Any, prefix: tuple[str, ...] = ()) -> Any:
        for name, command in group.commands.items():
            yield (*prefix, name), command
            if hasattr(command, "commands"):
                yield from commands(command, (*prefix, name))

    bare = [" ".join(path) for path, command in commands(main) if not (command.help or "").strip()]
    assert bare == []
    top = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert "need a cluster" in top and "pool" in top and "crd" in top


def test_workerpool_is_public() -> None:
    import kubemap

    assert "WorkerPool" in dir(kubemap) and "WorkerPool" in kubemap.__all__


def test_pool_commands_without_a_cluster_offer_no_local_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WorkerPools live on a cluster: `kubemap pool list` with no kubeconfig says how to
    point at one, and offers no --backend local (the pool commands have no such option)."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["pool", "list"])
    assert result.exit_code == 1
    assert "no Kubernetes configuration found" in result.stderr
    assert "KUBECONFIG" in result.stderr
    assert "--backend" not in result.stderr and "backend=" not in result.stderr


def test_get_shows_the_backup_copies_of_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from kubemap.cli import tasks
    from kubemap.cli.where import Where

    body = {
        "spec": {"mode": "Function"},
        "status": {
            "phase": "Succeeded",
            "total": 10,
            "succeeded": 10,
            "speculated": 2,
            "speculationWon": 1,
            "speculationWasted": 2,
        },
    }
    cluster = SimpleNamespace(namespace="ns")
    found = Where("kubernetes", "t", cluster=cluster, body=body)  # type: ignore[arg-type]
    monkeypatch.setattr(tasks, "locate", lambda *a, **kw: found)
    result = CliRunner().invoke(main, ["get", "t"])
    assert result.exit_code == 0, result.output
    assert "speculated:  2 backup copies, 1 won, 2 wasted" in result.output
