"""Drift detectors per (instrument, product), fed by predictions and lab results, as gauges.

The worker calls :meth:`DriftMonitor.observe` with each micro-batch of published predictions
and :meth:`DriftMonitor.observe_lab` with lab results from the lab-results topic. Detectors
(see :mod:`monitoring.drift`) per group:

``exceedance_rate``       share of spectra outside the 99 % T²/Q limits (input drift)
``mean_shift``            Hotelling T² of window means of (T², Q) (input drift)
``content_page_hinkley``  Page–Hinkley on the predicted content (output drift)
``cnn_pls_cusum``         CUSUM on CNN − PLS (the models start to disagree)
``lab_reference``         rolling RMSE / bias vs lab values (reference drift; needs RMSECV)

Label sets are bounded by :class:`nirwatch.metrics.BoundedLabels` and groups by
``max_groups``. When the served model version changes, every detector is reset: drift is
judged against the model now serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from monitoring.drift import (
    CUSUM,
    DEFAULT_ARL0,
    DriftDetector,
    ExceedanceRateDetector,
    PageHinkley,
)
from monitoring.lab_reference import LabReferenceTracker
from monitoring.mean_shift import MeanShiftDetector
from nirwatch.logs import log_event
from nirwatch.messages.lab_result import LabResult
from nirwatch.messages.prediction import Prediction
from nirwatch.metrics import DriftMetrics
from nirwatch.records.sample_join import SampleJoin
from nirwatch.settings import NirwatchSettings

log = logging.getLogger(__name__)


class DriftSettings(NirwatchSettings):
    """Drift detection settings (``NIRWATCH_DRIFT_*``).

    Every detector's limit comes from a stated false-alarm rate: ``*_alpha`` per test of a
    window (exceedance rate, mean shift, lab reference) or ``*_arl0``, the in-control average
    run length in samples (Page–Hinkley, CUSUM).
    """

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_DRIFT_", frozen=True, extra="ignore")

    exceedance_window: int = Field(default=500, ge=10)
    exceedance_expected_rate: float = Field(default=0.02, gt=0, lt=1)
    exceedance_alpha: float = Field(default=1e-6, gt=0, lt=1)
    mean_shift_window: int = Field(default=50, ge=2)
    mean_shift_alpha: float = Field(default=1e-5, gt=0, lt=1)
    warmup: int = Field(default=500, ge=10, description="samples to learn the in-control level")
    page_hinkley_delta: float = Field(default=0.25, ge=0)
    page_hinkley_arl0: float = Field(
        default=DEFAULT_ARL0, gt=1, description="samples per false alarm (sets the threshold)"
    )
    cusum_k: float = Field(default=0.5, ge=0)
    cusum_arl0: float = Field(
        default=DEFAULT_ARL0, gt=1, description="samples per false alarm (sets h)"
    )
    lab_window: int = Field(default=30, ge=2)
    lab_min_samples: int = Field(default=5, ge=1)
    lab_alpha: float = Field(
        default=1e-4, gt=0, lt=1, description="false-alarm probability per lab test"
    )
    lab_sd: float = Field(
        default=0.0,
        ge=0,
        description="lab method SD not contained in the RMSECV (target unit); 0 if it is",
    )
    max_groups: int = Field(default=64, ge=1)
    metrics_host: str = Field(default="127.0.0.1", description="nirwatch drift-monitor endpoint")
    metrics_port: int = Field(default=9109, ge=0, le=65535, description="0: no HTTP endpoint")
    join_cache_size: int = Field(default=100_000, ge=1)
    group_id: str = Field(
        default="nirwatch-drift", min_length=1, description="Kafka consumer group (--group-id)"
    )


class _Group:
    """The detectors of one (instrument, product)."""

    def __init__(self, s: DriftSettings, rmsecv: float | None) -> None:
        self.exceedance = ExceedanceRateDetector(
            s.exceedance_window, s.exceedance_expected_rate, s.exceedance_alpha
        )
        self.mean_shift = MeanShiftDetector(s.mean_shift_window, s.mean_shift_alpha, s.warmup)
        self.content = PageHinkley(s.page_hinkley_delta, warmup=s.warmup, arl0=s.page_hinkley_arl0)
        self.disagreement = CUSUM(s.cusum_k, warmup=s.warmup, arl0=s.cusum_arl0)
        self.lab: LabReferenceTracker | None = None
        if rmsecv is not None and rmsecv > 0:
            self.lab = LabReferenceTracker(
                rmsecv, s.lab_sd, s.lab_alpha, s.lab_window, s.lab_min_samples
            )

    def detectors(self) -> dict[str, DriftDetector[Any]]:
        out: dict[str, DriftDetector[Any]] = {
            "exceedance_rate": self.exceedance,
            "mean_shift": self.mean_shift,
            "content_page_hinkley": self.content,
            "cnn_pls_cusum": self.disagreement,
        }
        if self.lab is not None:
            out["lab_reference"] = self.lab
        return out

    def update(self, p: Prediction) -> None:
        self.exceedance.update(p.out_of_model)
        if p.t2 is not None and p.q is not None and p.t2_limit and p.q_limit:
            # Wilson & Hilferty (1931): the cube root of a chi-square-like statistic is
            # close to normal, which the Hotelling test on window means assumes.
            t2, q = p.t2 / p.t2_limit, p.q / p.q_limit
            if t2 >= 0 and q >= 0:
                self.mean_shift.update((t2 ** (1 / 3), q ** (1 / 3)))
        if p.value is not None:
            self.content.update(p.value)
        if p.cnn_value is not None and p.pls_value is not None:
            self.disagreement.update(p.cnn_value - p.pls_value)


#: A prediction waiting for its lab value: its group's key and the predicted content.
_Predicted = tuple[tuple[str, str], float]


def _lab_join(size: int) -> SampleJoin[_Predicted, float]:
    """Predictions joined to lab values by sample id: ``size`` of each remembered unpaired."""
    return SampleJoin(size)


class DriftMonitor:
    """Holds drift detectors per (instrument, product) and writes them to DriftMetrics.

    Parameters
    ----------
    metrics : DriftMetrics
        Every gauge of it is written (detector states and scores, lab RMSE and bias with
        their limits, the RMSECV).
    settings : DriftSettings
    rmsecv : float, optional
        RMSECV of the served model (enables the lab-reference detector).
    rmsecv_for : callable, optional
        ``rmsecv_for(model_version) -> float | None``, asked when predictions of a new model
        version arrive (e.g. :func:`monitoring.cli_drift.registry_rmsecv`).
    """

    def __init__(
        self,
        metrics: DriftMetrics,
        settings: DriftSettings | None = None,
        rmsecv: float | None = None,
        rmsecv_for: Callable[[str], float | None] | None = None,
    ) -> None:
        self.metrics = metrics
        self._rmsecv_for = rmsecv_for
        self.settings = settings or DriftSettings()
        self._rmsecv = rmsecv
        self._version: str | None = None
        self._groups: dict[tuple[str, str], _Group] = {}
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}
        self._joiner = _lab_join(self.settings.join_cache_size)
        self._lock = threading.Lock()
        #: (instrument, product, detector) now in drift: a change is logged once
        self._flagged: set[tuple[str, str, str]] = set()
        if rmsecv is not None:
            metrics.lab_rmsecv.set(rmsecv)

    def _key(self, instrument: str, product: str) -> tuple[str, str]:
        raw = (instrument, product)
        key = self._keys.get(raw)
        if key is None:
            key = (self.metrics.label(instrument), self.metrics.label(product or "none"))
            if key not in self._groups and len(self._groups) >= self.settings.max_groups:
                key = ("other", "other")
            if len(self._keys) < 8 * self.settings.max_groups:  # bounded like the labels
                self._keys[raw] = key
        return key

    def _group(self, key: tuple[str, str]) -> _Group:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(self.settings, self._rmsecv)
        return group

    def set_model(self, version: str, rmsecv: float | None = None) -> None:
        """A new model serves: reset every detector (drift is judged against this model)."""
        with self._lock:
            self._set_model(version, rmsecv)

    def _set_model(self, version: str, rmsecv: float | None) -> None:
        if version == self._version and rmsecv in (None, self._rmsecv):
            return
        first = self._version is None
        self._version = version
        if rmsecv is not None:
            self._rmsecv = rmsecv
            self.metrics.lab_rmsecv.set(rmsecv)
        for key in list(self._groups):
            self._groups[key] = _Group(self.settings, self._rmsecv)
        self._flagged.clear()
        log_event(log, "drift_model", version=version, rmsecv=self._rmsecv, detectors="reset")
        if not first:
            # lab values of the previous model's predictions must not judge the new one
            self._joiner = _lab_join(self.settings.join_cache_size)
        self._export(self._groups)

    def observe(self, predictions: Iterable[Prediction]) -> None:
        """Feed a micro-batch of published predictions (in order) and update the gauges."""
        touched: dict[tuple[str, str], _Group] = {}
        with self._lock:
            for p in predictions:
                if p.model_version != self._version:
                    rmsecv = self._rmsecv_for(p.model_version) if self._rmsecv_for else None
                    self._set_model(p.model_version, rmsecv)
                key = self._key(p.instrument_id, p.product)
                group = touched.get(key) or self._group(key)
                touched[key] = group
                group.update(p)
                if p.value is not None:
                    self._lab_pair(self._joiner.add_left(p.sample_id, (key, p.value)))
            self._export(touched)

    def observe_lab(self, results: Iterable[LabResult]) -> int:
        """Feed lab results; returns how many were joined to a prediction."""
        joined = 0
        with self._lock:
            touched: dict[tuple[str, str], _Group] = {}
            for result in results:
                pair = self._joiner.add_right(result.sample_id, result.value)
                if pair is not None:
                    joined += 1
                    key = pair[0][0]
                    touched[key] = self._group(key)
                    self._lab_pair(pair)
            self._export(touched)
        return joined

    def _lab_pair(self, pair: tuple[_Predicted, float] | None) -> None:
        if pair is not None:
            (key, predicted), measured = pair
            lab = self._group(key).lab
            if lab is not None:
                lab.update(predicted - measured)  # the residual, prediction - lab value

    def _export(self, groups: dict[tuple[str, str], _Group]) -> None:
        m = self.metrics
        for (instrument, product), group in groups.items():
            for name, det in group.detectors().items():
                m.drift_detected.labels(instrument, product, name).set(float(det.drift_detected))
                m.drift_score.labels(instrument, product, name).set(det.score)
                self._note(instrument, product, name, det)
            if group.lab is not None and group.lab.n:
                m.lab_rmse.labels(instrument, product).set(group.lab.rmse)
                m.lab_bias.labels(instrument, product).set(group.lab.bias)
                m.lab_rmse_limit.labels(instrument, product).set(group.lab.rmse_limit)
                m.lab_bias_limit.labels(instrument, product).set(group.lab.bias_limit)

    def _note(self, instrument: str, product: str, name: str, det: DriftDetector[Any]) -> None:
        """One log line when a detector enters or leaves the drift state."""
        key = (instrument, product, name)
        if det.drift_detected == (key in self._flagged):
            return
        if det.drift_detected:
            self._flagged.add(key)
        else:
            self._flagged.discard(key)
        log_event(
            log, "drift_detected" if det.drift_detected else "drift_cleared",
            level=logging.WARNING if det.drift_detected else logging.INFO,
            instrument=instrument, product=product, detector=name, score=det.score,
            model=self._version,
        )  # fmt: skip

    def status(self) -> dict[tuple[str, str], dict[str, float]]:
        """Scores of every detector per group (for the demo's table)."""
        with self._lock:
            return {
                key: {name: det.score for name, det in group.detectors().items()}
                for key, group in self._groups.items()
            }

    def lab_trackers(self) -> dict[tuple[str, str], LabReferenceTracker]:
        """The lab-reference detector of every group that has one, by (instrument, product)."""
        with self._lock:
            return {key: g.lab for key, g in self._groups.items() if g.lab is not None}

    def drifting(self) -> list[tuple[str, str, str]]:
        """(instrument, product, detector) of every detector now in the drift state."""
        with self._lock:
            return [
                (*key, name)
                for key, group in self._groups.items()
                for name, det in group.detectors().items()
                if det.drift_detected
            ]
