"""The predictor side of a model bundle: :class:`LoadedBundle`, built by
:func:`nirwatch.models.bundle.load_bundle` from a verified bundle's components.

CNN with PLS fallback, Hotelling T² / Q diagnostics, the out-of-model flag and the
calibrated-range check. The bundle
format itself (manifest, writing, verification, checksums) lives in :mod:`nirwatch.models.bundle`;
this module does not import it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nirwatch.chemometrics.diagnostics import leverage_scale
from nirwatch.chemometrics.state import apply_steps
from nirwatch.errors import DataError
from nirwatch.models.predictor import BatchPrediction

# Same logger name as before the split, so log routing and filters keep working.
log = logging.getLogger("nirwatch.models.bundle")


class LoadedBundle:
    """A verified bundle ready to predict: CNN with PLS fallback, T² / Q diagnostics.

    Implements :class:`nirwatch.models.predictor.Predictor`. Each batch is preprocessed as a whole
    (the transformers work on matrices), PLS always runs (it is the fallback and the CNN's
    sanity check), the CNN runs when it loaded.
    """

    def __init__(
        self,
        *,
        path: Path,
        manifest: Mapping[str, Any],
        checksum: str,
        pls: Any,
        statistics: Any,
        statistics_steps: Sequence[Any],
        cnn: Any | None,
        statistics_on_pls: bool = False,
        cnn_steps: Sequence[Any],
        cnn_load_error: str | None = None,
    ) -> None:
        self.path = path
        self.manifest = dict(manifest)
        self._checksum = checksum
        self._pls = pls
        self._stats = statistics
        self._stats_steps = list(statistics_steps)
        self._stats_on_pls = statistics_on_pls
        self._cnn = cnn
        self._cnn_steps = list(cnn_steps)
        self.cnn_load_error = cnn_load_error
        self.n_points = len(self.manifest["wavelengths"])
        self.fallback_limit = float(self.manifest["fallback_limit"])
        self.t2_limit = float(statistics.t2_limit_99_)
        self.q_limit = float(statistics.q_limit_99_)
        rng = self.manifest["target"].get("range")
        # Bundles written before the range was stored have none: no range check then.
        self.target_range: tuple[float, float] | None = (
            (float(rng[0]), float(rng[1])) if rng is not None else None
        )
        # Older bundles have no serving section: the CNN serves when present.
        serving = self.manifest.get("serving") or {}
        self.cnn_weight = float(serving.get("cnn_weight", 1.0)) if cnn is not None else 0.0
        interval = self.manifest.get("interval") or {}
        self._quantiles = {k: float(v) for k, v in (interval.get("quantiles") or {}).items()}
        self.interval_level: float | None = interval.get("level")
        width = self.manifest.get("max_interval_width")
        self.max_interval_width = None if width is None else float(width)
        self._n_calibration = int(self.manifest.get("training", {}).get("n_calibration", 0))
        ends = self.manifest.get("extrapolation") or {}
        self.range_end_model: str | None = ends.get("model")
        self.range_end_margin = float(ends.get("margin", 0.0))

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def checksum(self) -> str:
        return self._checksum

    @property
    def target(self) -> str:
        return str(self.manifest["target"]["name"])

    @property
    def unit(self) -> str:
        return str(self.manifest["target"]["unit"])

    @property
    def grid(self) -> str:
        return str(self.manifest["grid"])

    @property
    def pls_model(self) -> Any:
        """The PLS that serves as fallback (a PLSCalibration or an AveragedPLSCalibration)."""
        return self._pls

    @property
    def wavelengths(self) -> np.ndarray:
        return np.asarray(self.manifest["wavelengths"], dtype=float)

    @property
    def has_cnn(self) -> bool:
        return self._cnn is not None

    @property
    def cnn(self) -> Any | None:
        """The loaded CNN predictor (``CNNPredictor``), or None when PLS serves alone."""
        return self._cnn

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics", {}))

    def predict(self, spectra: np.ndarray) -> BatchPrediction:
        """Predict a batch of spectra, shape (n, n_points), on :attr:`grid`.

        Raises
        ------
        DataError
            If the batch is not 2-D with ``n_points`` columns.
        """
        X = np.asarray(spectra)
        if X.dtype not in (np.float32, np.float64):  # float32 (the wire's type) stays float32
            X = X.astype(np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_points:
            raise DataError(
                f"expected spectra of shape (n, {self.n_points}) on grid {self.grid}, got {X.shape}"
            )
        n = X.shape[0]
        if self._stats_on_pls:
            # One pass of the PLS's (lead's) preprocessing serves both PLS and the diagnostics.
            pls, Xs = self._pls.predict_and_preprocess(X)
        else:
            pls = np.asarray(self._pls.predict(X), dtype=np.float64).reshape(n)
            Xs = _apply(self._stats_steps, X)
        t2, q = self._score(Xs, n)
        cnn, reasons = self._cnn_values(X, pls, n)
        use_cnn = np.array([r is None for r in reasons], dtype=bool)
        w = self.cnn_weight
        label = "cnn" if w == 1 else "blend"
        value = np.where(use_cnn, w * cnn + (1 - w) * pls, pls)
        model = np.where(use_cnn, label, "pls")
        outside = None
        if self.target_range is not None:
            lo, hi = self.target_range
            outside = (value < lo) | (value > hi)  # NaN compares False: no value, no range flag
            value, model = self._range_ends(value, model, cnn, pls, use_cnn, reasons)
            outside |= (value < lo) | (value > hi)
        low, high, too_wide = self._intervals(value, model, t2)
        return BatchPrediction(
            value=value,
            model=model,
            fallback_reason=reasons,
            cnn_value=cnn,
            pls_value=pls,
            t2=t2,
            q=q,
            t2_limit=self.t2_limit,
            q_limit=self.q_limit,
            # NaN diagnostics compare False: written so that they count as out of model.
            out_of_model=~((t2 <= self.t2_limit) & (q <= self.q_limit)),
            outside_range=outside,
            interval_low=low,
            interval_high=high,
            too_wide=too_wide,
        )

    def _score(self, Xs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """T² and Q; NaN for spectra the preprocessing could not correct (see
        :func:`nirwatch.chemometrics.state.apply_steps`), which makes them out of model."""
        ok = np.isfinite(Xs).all(axis=1)
        t2, q = np.full(n, np.nan), np.full(n, np.nan)
        if ok.any():
            scores = self._stats.t2_q(Xs if ok.all() else Xs[ok])
            t2[ok], q[ok] = (np.asarray(a, dtype=np.float64).reshape(-1) for a in scores)
        return t2, q

    def _cnn_values(self, X: np.ndarray, pls: np.ndarray, n: int) -> tuple[np.ndarray, list]:
        """The CNN's predictions and, per spectrum, why it cannot serve (None: it can)."""
        cnn = np.full(n, np.nan)
        if self._cnn is None:
            return cnn, ["cnn_unavailable"] * n
        try:
            Xc = _apply(self._cnn_steps, X)
            cnn = np.asarray(self._cnn.predict(Xc), dtype=np.float64).reshape(n)
        except Exception:  # a failing CNN must never stop the line: PLS serves
            log.exception("bundle %s: CNN raised; PLS serves this batch", self.version)
            return np.full(n, np.nan), ["cnn_error"] * n
        finite = np.isfinite(cnn)
        disagree = finite & (np.abs(cnn - pls) > self.fallback_limit)
        return cnn, [
            "cnn_non_finite" if not f else ("cnn_pls_disagree" if d else None)
            for f, d in zip(finite.tolist(), disagree.tolist(), strict=True)
        ]

    def _range_ends(
        self,
        value: np.ndarray,
        model: np.ndarray,
        cnn: np.ndarray,
        pls: np.ndarray,
        use_cnn: np.ndarray,
        reasons: list[str | None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Within ``margin`` of a range end or beyond it, the range-end model serves (the one
        that predicted held-out range ends best in training); ``reasons`` gets ``range_end``."""
        ends_model = self.range_end_model
        if ends_model is None or self.target_range is None:
            return value, model
        lo, hi = self.target_range
        near = (value < lo + self.range_end_margin) | (value > hi - self.range_end_margin)
        if ends_model == "pls":
            alt = pls
        elif ends_model == "cnn":
            alt = np.where(use_cnn, cnn, np.nan)
        else:
            w = self.cnn_weight
            alt = np.where(use_cnn, w * cnn + (1 - w) * pls, np.nan)
        swap = near & np.isfinite(alt) & (model != ends_model)
        if not swap.any():
            return value, model
        for i in np.flatnonzero(swap).tolist():
            reasons[i] = reasons[i] or "range_end"
        return np.where(swap, alt, value), np.where(swap, ends_model, model)

    def _intervals(
        self, value: np.ndarray, model: np.ndarray, t2: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Conformal interval ``value ± quantile[model] * leverage scale`` (None: no interval
        in this bundle)."""
        if not self._quantiles:
            return None, None, None
        scale = leverage_scale(t2, self._n_calibration)
        quantile = np.array([self._quantiles.get(str(m), np.nan) for m in model.tolist()])
        half = quantile * scale
        low, high = value - half, value + half
        too_wide = None
        if self.max_interval_width is not None:
            # No interval (NaN) is not a narrow one: it is held too.
            too_wide = ~(high - low <= self.max_interval_width)
        return low, high, too_wide


def _apply(steps: Sequence[Any], X: np.ndarray) -> np.ndarray:
    return np.asarray(apply_steps(steps, X))
