"""Training killed or out of disk: no partial bundle is ever visible, in the output or registry.

``nirwatch train --model pls`` on the shootout data (about 5 s here) is killed with SIGKILL at
spread-out moments, and run again under a file-size limit (``RLIMIT_FSIZE``, with SIGXFSZ
ignored, so a write past the limit fails with EFBIG as on a full disk). After each, the bundle
directory either does not exist or verifies (every checksum), and every version the registry
lists verifies too.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nirwatch.models.bundle import verify_bundle
from nirwatch.models.registry import ModelRegistry

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


#: The recipe search once, without the nested CV: this test is about atomic writes, not the
#: model choice (tests/test_calibration_selection.py), and runs training ten times.
QUICK = {"NIRWATCH_TRAIN_NESTED_CV": "false", "NIRWATCH_TRAIN_CV_REPEATS": "1"}


def train_cmd(data: Path, out: Path, registry: Path) -> list[str]:
    return [
        sys.executable, "-m", "nirwatch.apps.cli", "train", "--data", str(data), "--target", "assay",
        "--unit", "mg", "--model", "pls", "--out", str(out), "--registry", str(registry),
    ]  # fmt: skip


def assert_nothing_partial(out: Path, registry: Path) -> str:
    """The bundle is absent or complete; every registered version verifies. Returns the state."""
    state = "absent"
    if out.exists():
        verify_bundle(out)  # raises on a missing file or a checksum mismatch
        state = "complete"
    if (registry / "models").exists():
        reg = ModelRegistry(registry)
        for info in reg.list():
            verify_bundle(reg.path(info.version))
    return state


def test_training_killed_at_any_moment_leaves_no_partial_bundle(
    tmp_path: Path, shootout_csv: Path
) -> None:
    registry = tmp_path / "registry"
    t0 = time.monotonic()
    subprocess.run(
        train_cmd(shootout_csv, tmp_path / "complete", registry), cwd=ROOT, check=True,
        capture_output=True, timeout=300, env=os.environ | QUICK,
    )  # fmt: skip
    full = time.monotonic() - t0
    assert assert_nothing_partial(tmp_path / "complete", registry) == "complete"
    states = []
    # Kill points spread over the whole run, denser near the end (bundle write, registration).
    for i, frac in enumerate([0.2, 0.45, 0.7, 0.8, 0.88, 0.93, 0.97, 1.0, 1.05]):
        out = tmp_path / f"bundle-{i}"
        proc = subprocess.Popen(
            train_cmd(shootout_csv, out, registry),
            cwd=ROOT,
            env=os.environ | QUICK,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(frac * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        states.append((frac, proc.returncode, assert_nothing_partial(out, registry)))
    versions = ModelRegistry(registry).list()
    print(
        f"\ntraining ({full:.1f} s) killed at (fraction, rc, bundle): {states}; "
        f"registered versions: {len(versions)}",
        file=sys.stderr,
    )


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("limit", [4_096, 16_384])
def test_training_out_of_disk_fails_cleanly(tmp_path: Path, shootout_csv: Path, limit: int) -> None:
    out, registry = tmp_path / "bundle", tmp_path / "registry"
    done = subprocess.run(
        train_cmd(shootout_csv, out, registry),
        cwd=ROOT,
        env=os.environ | QUICK,
        capture_output=True,
        timeout=300,
        preexec_fn=lambda: _limit_file_size(limit),  # noqa: PLW1509 - test-only child setup
    )
    err = done.stderr.decode(errors="replace").strip().splitlines()
    assert done.returncode != 0, "training cannot succeed with files capped at this size"
    assert assert_nothing_partial(out, registry) == "absent"
    assert "Traceback" not in done.stderr.decode(errors="replace")
    assert err[-1].startswith("nirwatch train: error:"), err[-1]
    print(f"\nfile size capped at {limit} B: rc {done.returncode}, {err[-1]}", file=sys.stderr)
