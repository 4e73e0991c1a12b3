"""Column scaling: every wavelength divided by its standard deviation over the calibration set.

With the mean-centring every PLS does, this is *autoscaling* (Wold, Sjöström & Eriksson 2001,
Chemom. Intell. Lab. Syst. 58, 109-130): each wavelength gets unit variance, so a band that
barely varies weighs as much as one that varies a lot. It is what scikit-learn's
``PLSRegression()`` does by default, so the ten-line PLS a user would write is among the
candidates :class:`nirwatch.chemometrics.pls_search.PLSCalibrationCV` compares.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from nirwatch.chemometrics._base import StateArrays, StateMeta, check_spectra, check_state
from nirwatch.chemometrics.state import register_stateful
from nirwatch.errors import DataError


@register_stateful
class UnitVarianceScaling(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Divide every column (wavelength) by its standard deviation in the fitted spectra.

    The same as scikit-learn's ``StandardScaler(with_mean=False)``: population standard
    deviation, and a column that does not vary is left unscaled (divided by 1).

    Attributes
    ----------
    scale_ : ndarray (p,)
    """

    def fit(self, X: Any, y: Any = None) -> Self:
        """Learn each column's standard deviation from X (n, p)."""
        X = check_spectra(X, who="UnitVarianceScaling").astype(np.float64, copy=False)
        std = X.std(axis=0)
        # Constant columns: scikit-learn's rule (a scale below 10 eps of the mean is 1).
        tiny = std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(X.mean(axis=0)), 1.0)
        self.scale_ = np.where(tiny, 1.0, std)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        """``X / scale_``, shape (n, p), X's float type."""
        check_is_fitted(self, "scale_")
        X = check_spectra(X, self.n_features_in_, who="UnitVarianceScaling")
        return X / self.scale_.astype(X.dtype, copy=False)

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """The scales as an array; the class name in the metadata."""
        check_is_fitted(self, "scale_")
        return {"scale_": self.scale_}, {"class": type(self).__name__}

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild from :meth:`to_state` output."""
        check_state(arrays, meta, cls, ["scale_"])
        scale = np.asarray(arrays["scale_"], dtype=np.float64)
        if scale.ndim != 1 or not (np.isfinite(scale).all() and (scale > 0).all()):
            raise DataError(f"UnitVarianceScaling state: scale_ must be finite and > 0, {scale!r}")
        obj = cls()
        obj.scale_ = scale
        obj.n_features_in_ = scale.size
        return obj
