"""The drift story of ``nirwatch demo --scenario drift``: detectors, lab join, one retrain.

:class:`DriftLoop` is fed by the demo's results consumer and shown in its table; the service
modules it drives are imported inside its methods, so ``nirwatch`` stays light to import.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class DriftLoop:
    """The drift story of ``--scenario drift``: detectors, lab join and one automatic retrain.

    Predictions and lab results feed a :class:`monitoring.drift_monitor.DriftMonitor` (with
    demo-sized windows so it reacts within seconds at 2 spectra/s); labelled spectra collect in
    a :class:`training.labelled.LabelledBuffer`. The first time a detector fires, a retrain runs
    in the background on the calibration set plus the recent labelled spectra, policy ``auto``;
    a promoted candidate is hot-reloaded by the worker and shows up in the table.
    """

    def __init__(self, metrics: Any, registry: Any, hmac_key: str | None, retrain: bool) -> None:
        from monitoring.drift_monitor import DriftMonitor, DriftSettings
        from nirwatch.metrics import DriftMetrics
        from training.labelled import LabelledBuffer

        champion = next((m for m in registry.list() if m.status == "champion"), None)
        rmsecv = (champion.metrics.get("pls_rmsecv") if champion else None) or None
        demo = DriftSettings(
            warmup=30,
            exceedance_window=50,  # the detector needs at least 50 samples
            mean_shift_window=10,
            lab_window=20,  # RMSE over 20 lab values: few false alarms from lab noise
            lab_min_samples=5,
        )
        # The demo serves worker and drift metrics from one endpoint (one registry).
        self.monitor = DriftMonitor(DriftMetrics(metrics.registry), demo, rmsecv=rmsecv)
        self.registry, self.hmac_key, self.retrain_enabled = registry, hmac_key, retrain
        self.buffer = LabelledBuffer(np.arange(600.0, 1900.0, 2.0))
        self.status = "no drift detected"
        self.min_recent = 24
        self._alarm: list[str] | None = None
        self._thread: threading.Thread | None = None

    def drifting(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for instrument, _product, detector in self.monitor.drifting():
            out.setdefault(instrument, []).append(detector)
        return out

    def check(self, errors: list[BaseException]) -> None:
        """On the first alarm, collect lab values from then on; retrain once there are enough.

        Spectra labelled before the alarm mostly show the process as it was, so the retrain
        (and its holdout) uses only those sampled after it.
        """
        if self._thread is not None:
            return
        if self._alarm is None:
            firing = sorted({d for *_, d in self.monitor.drifting()})
            if not firing:
                return
            self._alarm = firing
            self.buffer = type(self.buffer)(self.buffer.wavelengths)
        n = len(self.buffer.dataset())
        self.status = f"drift detected ({', '.join(self._alarm)})"
        if not self.retrain_enabled:
            return
        if n < self.min_recent:
            self.status += f": collecting lab values {n}/{self.min_recent}"
            return
        self.status += f": retraining on {n} recent lab values"
        self._thread = start_thread("retrain", lambda: self._retrain(self._alarm or []), errors)

    @property
    def retraining(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _retrain(self, names: list[str]) -> None:
        from nirwatch.simulation.simulator import calibration_set
        from training.labelled import Dataset
        from training.retrain import RetrainRequest, RetrainSettings, fit_bundle_fitter, retrain

        X, y, wl = calibration_set(300, seed=0, lab_noise=True)
        root = self.registry.root.parent
        settings = RetrainSettings(policy="auto", model="pls", reports_dir=root / "reports")
        report = retrain(
            RetrainRequest("alert", f"demo: drift detected by {', '.join(names)}"),
            Dataset(X, y, wl),
            self.buffer.dataset(),
            self.registry,
            # Quick fit for a live demo: no nested CV, one CV repeat.
            fit_bundle_fitter(
                target="api_content",
                unit="mg",
                model="pls",
                hmac_key=self.hmac_key,
                nested_cv=False,
                cv_repeats=1,
            ),  # fmt: skip
            settings,
            root / "staging",
        )
        self.status = (
            f"retrained on {report.get('data', {}).get('n_recent', 0)} recent lab values: "
            f"{report['decision']} {report.get('candidate', '')}: {report['why']}"
        )


def start_thread(name: str, target: Any, errors: list[BaseException]) -> threading.Thread:
    """A daemon thread running ``target``; an exception is appended to ``errors``."""

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            log.exception("%s failed", name)

    t = threading.Thread(target=guarded, name=name, daemon=True)
    t.start()
    return t
