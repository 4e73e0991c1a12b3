"""Each docker-compose service's command, run the way its container would run it.

No Docker engine exists here, so the container is emulated: the command from
docker-compose.yml (``nirwatch <command>`` as the image's entrypoint), started as the image's
unprivileged user (uid:gid 10001) in a root-owned, read-only copy of the app directory (the
Dockerfile's COPY lines), with compose's environment (anchors merged, ``${VAR:-default}``
substituted, the Dockerfile's ENV underneath) and every named volume and secret as a temporary
directory or file at which the container paths are redirected. A named volume starts owned by
whoever owns its mount point in the image, so a volume directory is writable only when the
Dockerfile creates that mount point for the user (issue 13 item 4: the worker's audit trail
defaulted into the root-owned /app and the worker died with a raw traceback).

Not compose's: every service gets ``NIRWATCH_KAFKA_BOOTSTRAP`` (and unique topic names) from
the test broker, its ports are free ports of this machine, and training is made small
(:data:`SMALL_TRAINING`: the same code paths and files, a few epochs instead of minutes of CPU).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import wait_until

from nirwatch.models.registry import ModelRegistry
from nirwatch.settings import KafkaSettings
from nirwatch.simulation.simulator import calibration_set
from nirwatch.transport.broker import free_port
from training.fit import fit_bundle

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
UID = GID = 10001
SERVICES = {
    name: svc
    for name, svc in COMPOSE["services"].items()
    if str(svc.get("image", "")).startswith("nirwatch")
}
LONG_RUNNING = sorted(n for n, s in SERVICES.items() if s.get("restart") != "no")
#: What the operator exports before `docker compose up` (compose's ``${VAR}``s without defaults).
COMPOSE_VARS = {"NIRWATCH_OPCUA_USERS": f"dcs:{secrets.token_hex(8)}"}

#: Training size only: model-init fits CNN + PLS as in compose, with fewer epochs and members.
SMALL_TRAINING = {
    "NIRWATCH_TRAIN_EPOCHS": "2",
    "NIRWATCH_TRAIN_CNN_MEMBERS": "1",
    "NIRWATCH_TRAIN_AUGMENT_COPIES": "0",
    "NIRWATCH_TRAIN_CV_FOLDS": "3",
    "NIRWATCH_TRAIN_PLS_MAX_COMPONENTS": "5",
}

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="dropping to uid 10001 needs root (the CI and dev machines are)"
)


# ---- what the image defines


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in dockerfile_lines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def image_user_dirs() -> set[str]:
    """Directories the Dockerfile gives to the unprivileged user (``chown``)."""
    dirs: set[str] = set()
    for line in dockerfile_lines():
        for m in re.finditer(r"chown\s+(?:-R\s+)?\S+\s+((?:/[^\s&;]*\s*)+)", line):
            dirs.update(m.group(1).split())
    return dirs


def copy_app(dest: Path) -> None:
    """The Dockerfile's ``COPY`` sources into ``dest`` (WORKDIR /app), read-only, root-owned."""
    for line in dockerfile_lines():
        if not line.startswith("COPY "):
            continue
        *sources, target = line.split()[1:]
        for src in sources:
            s = ROOT / src
            if s.is_dir():
                to = dest / Path(target).name if target not in ("./", ".") else dest / s.name
                shutil.copytree(s, to, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(s, dest / s.name)
    for p in [dest, *dest.rglob("*")]:
        mode = 0o555 if p.is_dir() else 0o444
        os.chmod(p, mode)


def substitute(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose needs {name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


# ---- the interpreter, as the unprivileged user can run it


def reachable_by_others(path: Path) -> bool:
    p = path.resolve()
    return all(d.stat().st_mode & stat.S_IXOTH for d in [*p.parents, p])


def user_runtime(root: Path) -> tuple[str, dict[str, str]]:
    """A python the unprivileged user can run, with this one's packages.

    The image has its own interpreter in /usr/local. Here the test's interpreter may live in
    a directory closed to other users (pyenv under /root, mode 0700): then its executable,
    shared library and standard library are hard-linked (no copy) under ``root``, and a
    virtual environment whose site-packages is this one's points at them.
    """
    exe = Path(sys.executable)
    if reachable_by_others(exe):
        return sys.executable, {}
    base = Path(sys.base_prefix)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    real_exe = exe.resolve()
    py, venv = root / "runtime" / "base", root / "runtime" / "venv"
    (py / "bin").mkdir(parents=True)
    (py / "lib").mkdir()
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / ver).mkdir(parents=True)
    os.link(real_exe, py / "bin" / ver)
    os.link(real_exe, venv / "bin" / ver)
    for lib in (base / "lib").glob("libpython*"):
        os.link(lib, py / "lib" / lib.name)
    stdlib = base / "lib" / ver
    shutil.copytree(
        stdlib, py / "lib" / ver, copy_function=os.link,
        ignore=lambda d, names: ["site-packages"] if Path(d) == stdlib else [],
    )  # fmt: skip
    (venv / "lib" / ver / "site-packages").symlink_to(sysconfig.get_paths()["purelib"])
    (venv / "pyvenv.cfg").write_text(
        f"home = {py / 'bin'}\ninclude-system-site-packages = false\n"
        f"version = {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}\n"
    )
    for d in [root / "runtime", *(root / "runtime").rglob("*")]:
        if d.is_dir() and not d.is_symlink():
            os.chmod(d, 0o755)
    # The interpreter finds its shared library by an absolute path under the closed directory.
    return str(venv / "bin" / ver), {"LD_LIBRARY_PATH": str(py / "lib")}


# ---- the emulated containers


class Stack:
    """Named volumes, secrets and an app copy shared by the emulated containers."""

    def __init__(self, root: Path, kafka: KafkaSettings) -> None:
        self.root = root
        self.kafka = kafka
        self.app = root / "app"
        self.app.mkdir()
        copy_app(self.app)
        os.chmod(self.app, 0o555)
        self.volumes: dict[str, Path] = {}
        self.secrets: dict[str, Path] = {}
        self.token = secrets.token_hex(32)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, dict[str, int]] = {}
        self.owned = image_user_dirs()
        self.python, self.python_env = user_runtime(root)

    def volume(self, name: str, mount_point: str) -> Path:
        if name not in self.volumes:
            d = self.root / "volumes" / name
            d.mkdir(parents=True)
            # An empty named volume takes its mount point's owner and mode from the image.
            if mount_point in self.owned:
                os.chown(d, UID, GID)
            else:
                os.chmod(d, 0o755)
            self.volumes[name] = d
        return self.volumes[name]

    def secret(self, name: str) -> Path:
        if name not in self.secrets:
            source = COMPOSE["secrets"][name]["environment"]
            assert source == "NIRWATCH_RETRAIN_WEBHOOK_TOKEN", source
            f = self.root / "secrets" / name
            f.parent.mkdir(exist_ok=True)
            f.write_text(self.token)
            os.chmod(f, 0o444)  # compose's default for file secrets
            self.secrets[name] = f
        return self.secrets[name]

    def mounts(self, service: str) -> dict[str, Path]:
        """Container path -> host path, for the service's volumes and secrets."""
        svc = SERVICES[service]
        out: dict[str, Path] = {}
        for spec in svc.get("volumes", []):
            src, dst, *_ = spec.split(":")
            assert src in COMPOSE["volumes"], f"{service}: {src} is not a named volume"
            out[dst] = self.volume(src, dst)
        for name in svc.get("secrets", []):
            out[f"/run/secrets/{name}"] = self.secret(name)
        return out

    def command(self, service: str, drop: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
        svc = SERVICES[service]
        assert svc.get("user") == f"{UID}:{GID}", f"{service} must run as {UID}:{GID}"
        mounts = self.mounts(service)

        def rewrite(value: str) -> str:
            for dst, host in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                if value == dst or value.startswith(dst + "/"):
                    return str(host) + value[len(dst) :]
            return value

        env = {
            **self.python_env,
            "PATH": f"{Path(self.python).parent}:/usr/bin:/bin",
            "HOME": str(self.app),  # useradd --home-dir /app
            "PYTHONPATH": str(self.app),
            **image_env(),
        }
        for key, value in svc.get("environment", {}).items():
            env[key] = rewrite(substitute(str(value), COMPOSE_VARS))
        env.update(self.kafka.env())
        env.update(SMALL_TRAINING)
        ports = {}
        for key in list(env):
            if key.endswith("_PORT"):
                env[key] = str(ports.setdefault(key, free_port()))
        self.ports[service] = ports
        for key in drop:
            env.pop(key, None)
        args = [rewrite(substitute(str(a), COMPOSE_VARS)) for a in svc["command"]]
        return [self.python, "-m", "nirwatch.apps.cli", *args], env

    def start(self, service: str, drop: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        cmd, env = self.command(service, drop)
        log = (self.root / f"{service}.log").open("wb")
        proc = subprocess.Popen(
            cmd, cwd=self.app, env=env, stdout=log, stderr=subprocess.STDOUT,
            user=UID, group=GID, extra_groups=[], start_new_session=True,
        )  # fmt: skip
        self.procs[service] = proc
        return proc

    def log(self, service: str) -> str:
        return (self.root / f"{service}.log").read_text(errors="replace")

    def port(self, service: str, suffix: str) -> int:
        return next(p for k, p in self.ports[service].items() if k.endswith(suffix))

    def stop_all(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        return codes


@pytest.fixture
def stack(kafka_settings: KafkaSettings) -> Iterator[Stack]:
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, closed to uid 10001.
    root = Path(tempfile.mkdtemp(prefix="nirwatch-container-"))
    os.chmod(root, 0o755)
    s = Stack(root, kafka_settings)
    try:
        yield s
    finally:
        s.stop_all()
        for p in root.rglob("*"):  # the app copy is read-only
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, stat.S_IRWXU)
        shutil.rmtree(root, ignore_errors=True)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def wait_for(what: str, check: Callable[[], Any], stack: Stack, timeout: float = 180.0) -> Any:
    """:func:`support.wait_until` that stops when a service dies and shows the services' logs."""

    def died() -> str | None:
        for name, proc in stack.procs.items():
            if proc.poll() is not None and name in LONG_RUNNING:
                return f"{name} exited with {proc.returncode}:\n{stack.log(name)[-3000:]}"
        return None

    try:
        return wait_until(
            check, timeout, what, interval_s=0.5, ignore=(OSError, sqlite3.Error), abort=died
        )
    except AssertionError as exc:
        logs = "\n".join(f"--- {n}\n{stack.log(n)[-2000:]}" for n in stack.procs)
        pytest.fail(f"{exc}\n{logs}")


def audit_rows(stack: Stack) -> int:
    with sqlite3.connect(f"file:{stack.volumes['audit']}/audit.sqlite3?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM prediction_audit").fetchone()[0])


# ---- tests


def test_every_nirwatch_service_runs_as_the_image_user_and_writes_only_to_volumes() -> None:
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.M)
    owned = image_user_dirs()
    for name, svc in SERVICES.items():
        assert svc.get("user") == f"{UID}:{GID}", name
        for spec in svc.get("volumes", []):
            src, dst, *_ = spec.split(":")
            assert src in COMPOSE["volumes"], f"{name}: {spec} is not a named volume"
            assert dst in owned, f"{name}: the Dockerfile must create {dst} for the user"
    # The worker's audit trail is on a volume, not in the image's working directory.
    worker = SERVICES["worker"]
    audit = worker["environment"]["NIRWATCH_AUDIT_PATH"]
    assert any(audit.startswith(spec.split(":")[1] + "/") for spec in worker["volumes"])


@needs_root
def test_compose_services_start_and_serve_as_their_containers(stack: Stack) -> None:
    init = stack.start("model-init")
    try:
        code = init.wait(900)
    except subprocess.TimeoutExpired:
        pytest.fail(f"model-init did not finish:\n{stack.log('model-init')[-3000:]}")
    assert code == 0, stack.log("model-init")[-3000:]
    assert ModelRegistry(stack.volumes["models"]).champion_version() is not None
    assert any(stack.volumes["reports"].rglob("*.json")), "model-init wrote no report"

    for name in LONG_RUNNING:
        stack.start(name)
    worker = f"http://127.0.0.1:{stack.port('worker', 'METRICS_PORT')}/metrics"
    wait_for(
        "worker predictions", lambda: "nirwatch_predictions_total{" in http_get(worker)[1], stack
    )
    wait_for("audit rows in the audit volume", lambda: audit_rows(stack) > 0, stack)
    drift = f"http://127.0.0.1:{stack.port('drift-monitor', 'METRICS_PORT')}/metrics"
    wait_for("drift-monitor metrics", lambda: http_get(drift)[0] == 200, stack)
    hook = f"http://127.0.0.1:{stack.port('training', 'WEBHOOK_PORT')}"
    wait_for("the retrain webhook", lambda: http_get(hook + "/healthz")[0] == 200, stack)
    drop = f"http://127.0.0.1:{stack.port('file-drop', 'METRICS_PORT')}/metrics"
    wait_for("file-drop metrics", lambda: http_get(drop)[0] == 200, stack)
    assert (stack.volumes["inbox"] / "done").is_dir()
    opcua = f"http://127.0.0.1:{stack.port('opcua-server', 'METRICS_PORT')}/metrics"
    wait_for("opcua-server metrics", lambda: http_get(opcua)[0] == 200, stack)
    assert any(stack.volumes["opcua-pki"].rglob("server_cert.der")), "no server certificate"

    running = {n: p.poll() for n, p in stack.procs.items() if n in LONG_RUNNING}
    assert running == dict.fromkeys(LONG_RUNNING), {n: stack.log(n)[-2000:] for n in running}
    codes = stack.stop_all()
    for name in LONG_RUNNING:
        log = stack.log(name)
        assert codes[name] == 0, f"{name} exited with {codes[name]}:\n{log[-3000:]}"
        assert "Traceback" not in log, f"{name}:\n{log[-3000:]}"
    # Nothing was written into the app directory (it is read-only: this shows nobody tried).
    assert not any(p.name.endswith((".sqlite3", ".pyc")) for p in stack.app.rglob("*"))


@needs_root
def test_an_unwritable_audit_path_stops_the_worker_with_a_clear_error(stack: Stack) -> None:
    # A champion to serve, so that only the audit path is wrong: without NIRWATCH_AUDIT_PATH
    # the default, var/audit.sqlite3, lies in the read-only /app.
    X, y, wl = calibration_set(60, seed=0)
    bundle = fit_bundle(
        X, y, wl, target="api", unit="mg", model="pls", out_dir=stack.root / "bundle",
        cv_folds=3, pls_max_components=3,
    )  # fmt: skip
    registry = ModelRegistry(stack.volume("models", "/models"))
    registry.promote(registry.register(bundle))
    proc = stack.start("worker", drop=("NIRWATCH_AUDIT_PATH",))
    assert proc.wait(120) == 1
    log = stack.log("worker")
    assert "Traceback" not in log, log
    assert "NIRWATCH_AUDIT_PATH" in log and "not a writable directory" in log, log
    assert f"uid {UID}" in log and str(stack.app / "var") in log, log
