"""Spectral data augmentation for training CNNs on small calibration sets.

Bjerrum, Glahder & Skov (2017), "Data augmentation of spectral data for convolutional neural
network (CNN) based deep chemometrics", arXiv:1710.01927: each training spectrum is copied
several times with a random baseline offset, a random linear tilt and a random multiplicative
gain, the kinds of variation that scatter and path length cause in real NIR spectra, so that
the network learns to ignore them. Their magnitudes are tied to the training set's spread so
that the same settings work for any absorbance scale.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from nirwatch.chemometrics._base import StateArrays, StateMeta, check_spectra, check_state
from nirwatch.chemometrics.state import register_stateful
from nirwatch.errors import DataError


@register_stateful
class SpectralAugmenter(BaseEstimator):
    """Random offset, tilt, gain and noise copies of spectra (Bjerrum et al. 2017).

    For copy ``c`` of spectrum ``x`` (axis ``u`` running from -0.5 to 0.5, so the tilt is
    centred on the axis midpoint and ``t`` is the rise from first to last point)::

        x_c = g * x + s * (b + t * u) + s * noise_std * N(0, 1)

    where ``s`` is the training spectra's standard deviation (``spread_``, all values pooled)
    and, with ``distribution="uniform"`` (as in the paper), ``b ~ U(-offset_std, offset_std)``,
    ``t ~ U(-slope_std, slope_std)``, ``g ~ U(1 - gain_std, 1 + gain_std)``; with
    ``distribution="normal"`` the same parameters are the standard deviations of normal draws.
    Offset and tilt are in units of ``s``; the gain is dimensionless (a fraction of 1).

    Parameters
    ----------
    n_copies : int, default 10
        Augmented copies per spectrum.
    offset_std : float, default 0.10
        Additive offset, as a fraction of the training spread (paper: ±0.10 × std).
    slope_std : float, default 0.05
        Linear tilt across the axis, as a fraction of the training spread (paper: ±0.05).
    gain_std : float, default 0.10
        Multiplicative gain around 1 (paper: 1 ± 0.10).
    noise_std : float, default 0.0
        White Gaussian noise per point, as a fraction of the training spread; off by default
        (the paper adds none; NIR instrument noise is far below these effects).
    random_state : int, optional
        Seed; each :meth:`augment` call starts from it, so the same seed gives the same copies.
    distribution : {"uniform", "normal"}, default "uniform"

    Attributes
    ----------
    spread_ : float
        Standard deviation of all values of the spectra given to ``fit``.
    """

    def __init__(
        self,
        n_copies: int = 10,
        offset_std: float = 0.10,
        slope_std: float = 0.05,
        gain_std: float = 0.10,
        noise_std: float = 0.0,
        random_state: int | None = None,
        distribution: Literal["uniform", "normal"] = "uniform",
    ) -> None:
        self.n_copies = n_copies
        self.offset_std = offset_std
        self.slope_std = slope_std
        self.gain_std = gain_std
        self.noise_std = noise_std
        self.random_state = random_state
        self.distribution = distribution

    def _validate(self) -> None:
        if not isinstance(self.n_copies, int | np.integer) or self.n_copies < 0:
            raise DataError(f"n_copies must be an integer >= 0, got {self.n_copies!r}")
        for name in ("offset_std", "slope_std", "gain_std", "noise_std"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise DataError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.distribution not in ("uniform", "normal"):
            raise DataError(
                f"distribution must be 'uniform' or 'normal', got {self.distribution!r}"
            )

    def fit(self, X: Any, y: Any = None) -> Self:
        """Learn the training spectra's spread, X of shape (n, p)."""
        self._validate()
        X = check_spectra(X, who="SpectralAugmenter")
        self.spread_ = float(np.std(X, dtype=np.float64))
        self.n_features_in_ = X.shape[1]
        return self

    def _draw(self, rng: np.random.Generator, scale: float, size: int) -> np.ndarray:
        if self.distribution == "uniform":
            return rng.uniform(-scale, scale, size)
        return rng.normal(0.0, scale, size)

    def augment(
        self, X: Any, y: Any = None, *, include_original: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augmented copies of X, with y repeated to match.

        Parameters
        ----------
        X : array-like (n, p)
        y : array-like (n,) or (n, k), optional
        include_original : bool, default True
            Put the unchanged spectra first.

        Returns
        -------
        X_aug : ndarray (n * (n_copies + include_original), p), X's float type
            Originals (if included), then copy 1 of every spectrum, copy 2...
        y_aug : ndarray, y repeated in the same order, or None without y.
        """
        check_is_fitted(self, "spread_")
        self._validate()
        X = check_spectra(X, self.n_features_in_, who="SpectralAugmenter")
        n, p = X.shape
        m = n * int(self.n_copies)
        rng = np.random.default_rng(self.random_state)
        offset = self._draw(rng, self.offset_std, m)
        tilt = self._draw(rng, self.slope_std, m)
        gain = 1.0 + self._draw(rng, self.gain_std, m)
        u = np.linspace(-0.5, 0.5, p)
        s = self.spread_
        copies = np.tile(X, (int(self.n_copies), 1))
        copies *= gain.astype(X.dtype)[:, None]
        copies += (s * (offset[:, None] + tilt[:, None] * u)).astype(X.dtype)
        if self.noise_std > 0:
            copies += (s * self.noise_std * rng.standard_normal((m, p))).astype(X.dtype)
        parts = [X, copies] if include_original else [copies]
        X_aug = np.concatenate(parts, axis=0)
        if y is None:
            return X_aug, None
        y_arr = np.asarray(y)
        if y_arr.shape[0] != n:
            raise DataError(f"y: expected {n} values (one per spectrum), got {y_arr.shape[0]}")
        reps = int(self.n_copies) + (1 if include_original else 0)
        return X_aug, np.concatenate([y_arr] * reps, axis=0)

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """Parameters and the learned spread as JSON-able metadata; no arrays."""
        check_is_fitted(self, "spread_")
        params = {k: v for k, v in self.get_params().items()}
        return {}, {
            "class": type(self).__name__,
            "params": params,
            "spread_": self.spread_,
            "n_features_in_": int(self.n_features_in_),
        }

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild from :meth:`to_state` output."""
        check_state(arrays, meta, cls, [])
        obj = cls(**meta["params"])
        obj.spread_ = float(meta["spread_"])
        obj.n_features_in_ = int(meta["n_features_in_"])
        return obj
