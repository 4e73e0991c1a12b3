"""The demo's CNN: trained in a background process while PLS serves, then promoted.

``nirwatch demo`` starts on the PLS model it fits in seconds; what nirwatch is for is the CNN
ensemble with PLS as its fallback. :class:`BackgroundCNN` trains one in a child process
(``python -m nirwatch.apps.demo_cnn``) on the same simulated calibration set, niced and with one
torch thread, so that on a small machine the worker keeps up; the child's plain progress lines
("CNN member k/5: ...") become the table's status line. When the bundle is written it is
registered and promoted, unless the champion changed meanwhile (a drift retrain), and the
worker hot-reloads it: the table's model column turns from ``pls`` to ``cnn``.

The child is its own ``main``: it reads the registry settings (the signing key) from the
environment it inherits, like any service.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Small enough for a few minutes on one CPU thread; the table says so.
DEFAULT_EPOCHS = 20
DEFAULT_MEMBERS = 5
DEFAULT_AUGMENT_COPIES = 2
_BUNDLE_LINE = "demo-cnn bundle: "


class BackgroundCNN:
    """Train, register and promote the demo's CNN in the background.

    Parameters
    ----------
    registry : nirwatch.models.registry.ModelRegistry
    staging : Path
        Where the child writes its bundle (removed once registered).
    epochs, members, augment_copies : int
        Training size (``fit_bundle``'s ``epochs``, ``cnn_members``, ``augment_copies``).
    """

    def __init__(
        self,
        registry: Any,
        staging: Path,
        *,
        epochs: int = DEFAULT_EPOCHS,
        members: int = DEFAULT_MEMBERS,
        augment_copies: int = DEFAULT_AUGMENT_COPIES,
    ) -> None:
        self.registry, self.staging = registry, staging
        self.epochs, self.members, self.augment_copies = epochs, members, augment_copies
        self.size = f"{members} members x {epochs} epochs, 1 CPU thread, niced"
        self.status = f"CNN ({self.size}): starting"
        self.promoted: str | None = None
        self.failed = False
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the child process and the thread that follows it."""
        champion = self.registry.champion_version()
        out = self.staging / f"cnn-{int(time.time())}-{os.getpid()}"
        self.staging.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "nirwatch.apps.demo_cnn", str(out),
            "--epochs", str(self.epochs), "--members", str(self.members),
            "--augment-copies", str(self.augment_copies),
        ]  # fmt: skip
        # One thread for torch and BLAS alike: the worker, not the training, gets the cores.
        env = os.environ | {
            k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        }
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        )
        self._thread = threading.Thread(
            target=self._follow, args=(self._proc, champion), name="demo-cnn", daemon=True
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop a child still training (the demo ends first)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
            self.status = f"CNN ({self.size}): stopped before it finished"
        if self._thread is not None:
            self._thread.join(timeout)

    def _follow(self, proc: subprocess.Popen[str], champion: str | None) -> None:
        assert proc.stdout is not None
        bundle: Path | None = None
        last = ""
        for raw in proc.stdout:
            line = raw.strip()
            if line.startswith(_BUNDLE_LINE):
                bundle = Path(line[len(_BUNDLE_LINE) :])
            elif line and not line.startswith(("bundle written", "Warning")):
                last = line
                self.status = f"CNN training ({self.size}): {line}"
        rc = proc.wait()
        if rc != 0 or bundle is None:
            if rc < 0:  # terminated by stop()
                return
            self.failed = True
            self.status = f"CNN training failed (exit {rc}): {last}; PLS keeps serving"
            log.error("demo CNN training failed with exit code %s: %s", rc, last)
            return
        self._register(bundle, champion)

    def _register(self, bundle: Path, champion: str | None) -> None:
        import shutil

        from nirwatch.errors import NirwatchError

        try:
            version = self.registry.register(bundle)
            shutil.rmtree(bundle, ignore_errors=True)  # the registry holds its own copy
            if self.registry.champion_version() != champion:
                self.status = (
                    f"CNN {version[-4:]} registered as candidate: the champion changed while "
                    "it trained (`nirwatch models promote` to serve it)"
                )
                return
            self.registry.promote(version)
        except NirwatchError as exc:
            self.failed = True
            self.status = f"CNN could not be registered: {exc}; PLS keeps serving"
            log.error("demo CNN: %s", exc)
            return
        self.promoted = version
        self.status = (
            f"CNN {version[-4:]} ({self.size}) promoted: the worker hot-reloads it, "
            "PLS stays its fallback"
        )


def main(argv: list[str] | None = None) -> int:
    """Child process: fit a CNN + PLS bundle on the demo's calibration set, print its path."""
    p = argparse.ArgumentParser(prog="python -m nirwatch.apps.demo_cnn")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--members", type=int, default=DEFAULT_MEMBERS)
    p.add_argument("--augment-copies", type=int, default=DEFAULT_AUGMENT_COPIES)
    args = p.parse_args(argv)
    os.nice(10)  # the worker, in the demo's process, comes first
    print("loading torch and the training code", flush=True)
    import torch

    torch.set_num_threads(1)
    from nirwatch.models.registry import RegistrySettings
    from nirwatch.settings import load_settings
    from nirwatch.simulation.simulator import calibration_set
    from training.fit import fit_bundle

    hmac_key = load_settings(RegistrySettings).key()
    X, y, wl = calibration_set(300, seed=0, lab_noise=True)
    X_test, y_test, _ = calibration_set(100, seed=1, lab_noise=True)
    print("fitting the bundle: PLS (the fallback) first, then the CNN", flush=True)
    path = fit_bundle(
        X, y, wl, target="api_content", unit="mg", model="cnn", out_dir=args.out_dir,
        X_test=X_test, y_test=y_test, hmac_key=hmac_key, progress=True,
        epochs=args.epochs, cnn_members=args.members, augment_copies=args.augment_copies,
        device="cpu", nested_cv=False, cv_repeats=1,  # a live demo: no nested CV,
        search_max_samples=100,  # and a PLS search on 100 spectra, so the CNN comes soon
    )  # fmt: skip
    print(f"{_BUNDLE_LINE}{path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
