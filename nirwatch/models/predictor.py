"""The interface between a model bundle and the inference worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(slots=True)
class BatchPrediction:
    """Predictions and diagnostics for a micro-batch of n spectra.

    Attributes
    ----------
    value : ndarray (n,)
        The published prediction (NaN where no model could predict).
    model : ndarray (n,) of str
        ``"cnn"``, ``"pls"`` or ``"blend"`` (a weighted mean of the two): which model
        produced ``value``.
    fallback_reason : list of (str or None), length n
        Why PLS was used instead of the CNN (bounded codes, e.g. ``"cnn_unavailable"``,
        ``"cnn_error"``, ``"cnn_non_finite"``, ``"cnn_pls_disagree"``, or ``"range_end"``
        when the bundle's range-end model replaced the served one); None otherwise.
    cnn_value, pls_value : ndarray (n,)
        Each model's own prediction (NaN when not computed).
    t2, q : ndarray (n,)
        Hotelling T² and Q residual against the calibration model.
    t2_limit, q_limit : float
        The 99 % limits used for ``out_of_model``.
    out_of_model : ndarray (n,) of bool
        Outside the calibration's applicability domain: not releasable.
    outside_range : ndarray (n,) of bool, optional
        ``value`` lies outside the range of the calibration's reference values: an
        extrapolation, not releasable (the validated range of the method, as in the EMA NIR
        guideline EMA/CHMP/CVMP/QWP/17760/2009 Rev. 2). None when the model has no range.
    interval_low, interval_high : ndarray (n,), optional
        The prediction interval (conformal, at the bundle's level); NaN where there is none.
    too_wide : ndarray (n,) of bool, optional
        The interval is wider than the bundle's ``max_interval_width``: not releasable.
    """

    value: np.ndarray
    model: np.ndarray
    fallback_reason: list[str | None]
    cnn_value: np.ndarray
    pls_value: np.ndarray
    t2: np.ndarray
    q: np.ndarray
    t2_limit: float
    q_limit: float
    out_of_model: np.ndarray
    outside_range: np.ndarray | None = None
    interval_low: np.ndarray | None = None
    interval_high: np.ndarray | None = None
    too_wide: np.ndarray | None = None


class Predictor(Protocol):
    """What the worker needs from a loaded model bundle."""

    @property
    def version(self) -> str: ...

    @property
    def checksum(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def unit(self) -> str: ...

    @property
    def grid(self) -> str:
        """Wavelength grid id the models were calibrated on (see :mod:`nirwatch.grid`)."""
        ...

    @property
    def has_cnn(self) -> bool:
        """True when the bundle's CNN is loaded and serves (PLS is its fallback)."""
        ...

    @property
    def cnn_load_error(self) -> str | None:
        """Why the bundle's CNN did not load (None when it did, or the bundle has none)."""
        ...

    def predict(self, spectra: np.ndarray) -> BatchPrediction:
        """Predict a batch, spectra of shape (n, n_points) float32 on :attr:`grid`."""
        ...
