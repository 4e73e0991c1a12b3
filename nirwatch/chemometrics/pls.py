"""PLS calibration: preprocessing steps + PLS regression, latent variables chosen by K-fold CV.

:class:`PLSCalibration` is the fitted model. It keeps only plain arrays:
``predict(X) = preprocess(X) @ coef_ + intercept_``, so inference needs no scikit-learn
estimator and the bundle needs no pickle. :class:`PLSComponentsCV` chooses its number of
latent variables by K-fold CV and owns the CV results; :class:`~nirwatch.chemometrics.pls_search.
PLSCalibrationCV` searches preprocessing recipes as well.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.cross_decomposition import PLSRegression
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_is_fitted

from nirwatch.chemometrics._base import StateArrays, StateMeta, check_spectra, check_state
from nirwatch.chemometrics.state import apply_steps, dump_steps, load_steps, register_stateful
from nirwatch.errors import DataError, ModelError

Rule = Literal["min", "1se"]


def check_calibration_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Calibration spectra (n, p) and their reference values (n,), checked; raises DataError."""
    X = check_spectra(X, who="calibration spectra")
    if X.shape[0] < 2:
        raise DataError(f"calibration spectra: PLS needs at least 2, got {X.shape[0]} sample")
    if y is None:
        raise DataError("y: PLS requires y to be passed, but the target y is None")
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected; raveled to shape "
            f"({y.shape[0]},)",
            DataConversionWarning,
            stacklevel=3,
        )
        y = y.ravel()
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataError(f"y: expected shape ({X.shape[0]},), one value per spectrum, got {y.shape}")
    if not np.isfinite(y).all():
        raise DataError(f"y: non-finite values at rows {np.flatnonzero(~np.isfinite(y))[:10]}")
    if np.ptp(y) == 0:
        raise DataError(f"y: constant ({y[0]:g}); nothing to calibrate")
    return X, y


def _max_components(requested: int, n: int, p: int) -> int:
    a = min(int(requested), n - 1, p)
    if a < 1:
        raise DataError(f"PLS needs at least 2 spectra and 1 point, got {n} x {p}")
    return a


def _pls_path(Z: np.ndarray, y: np.ndarray, n_components: int) -> PLSRegression:
    """PLS1 without scaling (NIR spectra share one absorbance scale: centre only)."""
    return PLSRegression(n_components=n_components, scale=False).fit(Z, y)


def _coefficients(pls: PLSRegression, a: int) -> np.ndarray:
    """Regression vector of the first ``a`` components, shape (p,).

    ``x_rotations_ = W (P'W)^-1`` with ``P'W`` upper triangular (NIPALS; Manne 1987), so its
    first ``a`` columns are the rotations of the ``a``-component model: one fit gives every
    model on the path.
    """
    return pls.x_rotations_[:, :a] @ pls.y_loadings_[0, :a]


@register_stateful
class PLSCalibration(RegressorMixin, BaseEstimator):
    """Preprocessing steps followed by a PLS1 regression with ``n_components`` latent variables.

    Parameters
    ----------
    steps : sequence of transformers
        Applied in order before PLS (cloned and fitted on the calibration spectra).
    n_components : int, default 10

    Attributes
    ----------
    steps_ : list
        The fitted steps.
    coef_ : ndarray (q,)
        Regression vector on the preprocessed spectra (q points after the steps).
    intercept_ : float
    x_mean_ : ndarray (q,)
        Mean preprocessed calibration spectrum.
    n_components_ : int
    rmsec_ : float
        Root mean squared error on the calibration set itself.
    """

    def __init__(self, steps: Sequence[Any] = (), n_components: int = 10) -> None:
        self.steps = steps
        self.n_components = n_components

    def fit(self, X: Any, y: Any) -> Self:
        """Fit the steps, then PLS, X of shape (n, p), y of shape (n,)."""
        X, y = check_calibration_xy(X, y)
        self.n_features_in_ = X.shape[1]
        self.steps_ = [clone(step) for step in self.steps]
        Z = X
        for step in self.steps_:
            Z = step.fit_transform(Z)
        if not np.isfinite(Z).all():
            rows = np.flatnonzero(~np.isfinite(Z).all(axis=1))[:10].tolist()
            raise DataError(
                f"PLSCalibration: the preprocessing steps made calibration spectra {rows} "
                "non-finite (NaN or inf; e.g. SNV of a flat spectrum)"
            )
        a = _max_components(self.n_components, *Z.shape)
        if a != self.n_components:
            raise DataError(
                f"n_components={self.n_components} is more than {Z.shape[0]} spectra x "
                f"{Z.shape[1]} points allow (at most {a})"
            )
        pls = _pls_path(Z, y, a)
        self.coef_ = _coefficients(pls, a)
        self.x_mean_ = Z.mean(axis=0, dtype=np.float64)
        self.intercept_ = float(np.mean(y) - self.x_mean_ @ self.coef_)
        self.n_components_ = a
        self.rmsec_ = float(np.sqrt(np.mean((Z @ self.coef_ + self.intercept_ - y) ** 2)))
        return self

    def preprocess(self, X: Any) -> np.ndarray:
        """Spectra after the fitted steps, shape (n, q)."""
        check_is_fitted(self, "coef_")
        X = check_spectra(X, self.n_features_in_, who="PLSCalibration")
        return apply_steps(self.steps_, X)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values, shape (n,), float64."""
        Z = self.preprocess(X)
        # float32 batches stay float32 through the product (error ~1e-6 relative), then widen.
        return (Z @ self.coef_.astype(Z.dtype, copy=False)).astype(np.float64) + self.intercept_

    def predict_preprocessed(self, Z: Any) -> np.ndarray:
        """Predicted values, shape (n,), from spectra already through :meth:`preprocess`.

        For a caller that needs the preprocessed spectra too (the bundle's T²/Q statistics):
        one preprocessing pass serves both. The product is in float64 whatever Z's type.
        """
        check_is_fitted(self, "coef_")
        Z = np.asarray(Z)
        if Z.ndim != 2 or Z.shape[1] != self.coef_.shape[0]:
            raise DataError(
                f"PLSCalibration: expected preprocessed spectra of shape (n, "
                f"{self.coef_.shape[0]}), got {Z.shape}"
            )
        return Z.astype(np.float64) @ self.coef_ + self.intercept_

    def predict_and_preprocess(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(predicted values (n,) in float64, preprocessed spectra): one preprocessing pass for
        a caller that needs both (the bundle's T²/Q statistics)."""
        Z = self.preprocess(X)
        return self.predict_preprocessed(Z), Z

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """Coefficients and the steps' arrays; scalars and step classes as metadata."""
        check_is_fitted(self, "coef_")
        arrays, steps_meta = dump_steps(self.steps_, prefix="steps")
        arrays.update(coef_=self.coef_, x_mean_=self.x_mean_)
        meta: StateMeta = {
            "class": type(self).__name__,
            "n_components_": int(self.n_components_),
            "intercept_": self.intercept_,
            "rmsec_": self.rmsec_,
            "n_features_in_": int(self.n_features_in_),
            "steps": steps_meta,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild a fitted calibration from :meth:`to_state` output.

        States written when the CV curve was stored on the model (``cv_curve_``...) load
        too; those entries are ignored (the CV results belong to :class:`PLSComponentsCV`).
        """
        check_state(arrays, meta, cls, ["coef_", "x_mean_"])
        steps = load_steps(arrays, meta["steps"])
        obj = cls(steps=steps, n_components=int(meta["n_components_"]))
        obj.steps_ = steps
        obj.coef_ = np.asarray(arrays["coef_"], dtype=np.float64)
        obj.x_mean_ = np.asarray(arrays["x_mean_"], dtype=np.float64)
        obj.intercept_ = float(meta["intercept_"])
        obj.n_components_ = int(meta["n_components_"])
        obj.rmsec_ = float(meta["rmsec_"])
        obj.n_features_in_ = int(meta["n_features_in_"])
        return obj


def _cv_folds(n: int, cv: int, random_state: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if not 2 <= cv <= n:
        raise DataError(f"cv: need 2 <= folds <= {n} spectra, got {cv}")
    return list(KFold(n_splits=cv, shuffle=True, random_state=random_state).split(np.empty((n, 1))))


def _cv_path_predictions(
    X: np.ndarray,
    y: np.ndarray,
    steps: Sequence[Any],
    max_components: int,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Held-out predictions of 1..A latent variables, shape (n, A), steps refitted per fold."""
    A = min(_max_components(max_components, len(f[0]), X.shape[1]) for f in folds)
    pred = np.empty((X.shape[0], A))
    for train, test in folds:
        fitted = [clone(step) for step in steps]
        Z_train, Z_test = X[train], X[test]
        for step in fitted:
            Z_train = step.fit_transform(Z_train)
            Z_test = step.transform(Z_test)
        pls = _pls_path(Z_train, y[train], A)
        # Predictions of all A models at once: cumulative sum over the components' terms.
        scores = (Z_test - Z_train.mean(axis=0)) @ pls.x_rotations_  # (n_test, A)
        pred[test] = y[train].mean() + np.cumsum(scores * pls.y_loadings_[0], axis=1)
    return pred


def _cv_curve(
    pred: np.ndarray, y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled RMSECV and the standard error of the per-fold RMSE, each (A,)."""
    sq_err = (pred - y[:, None]) ** 2
    fold_rmse = np.array([np.sqrt(sq_err[test].mean(axis=0)) for _, test in folds])
    return np.sqrt(sq_err.mean(axis=0)), fold_rmse.std(axis=0, ddof=1) / np.sqrt(len(folds))


def cross_validate_pls(
    X: Any,
    y: Any,
    steps: Sequence[Any],
    max_components: int = 20,
    cv: int = 10,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """RMSECV of 1..A latent variables by shuffled K-fold CV, steps refitted in every fold.

    Returns
    -------
    rmsecv : ndarray (A,)
        Pooled over all held-out predictions: ``sqrt(PRESS_a / n)``.
    se : ndarray (A,)
        Standard error of the per-fold RMSE (``std(ddof=1) / sqrt(K)``), for the 1-SE rule.
    """
    X, y = check_calibration_xy(X, y)
    folds = _cv_folds(X.shape[0], cv, random_state)
    return _cv_curve(_cv_path_predictions(X, y, steps, max_components, folds), y, folds)


def choose_components(rmsecv: np.ndarray, se: np.ndarray, rule: Rule = "min") -> int:
    """Number of latent variables from a CV curve (index 0 is one component).

    ``"min"``: the minimum RMSECV. ``"1se"``: the fewest components whose RMSECV is within one
    standard error of the minimum (Hastie, Tibshirani & Friedman, ESL 2nd ed., sec. 7.10).
    """
    best = int(np.argmin(rmsecv))
    if rule == "min":
        return best + 1
    if rule == "1se":
        return int(np.flatnonzero(rmsecv <= rmsecv[best] + se[best])[0]) + 1
    raise DataError(f"rule must be 'min' or '1se', got {rule!r}")


class PLSComponentsCV(RegressorMixin, BaseEstimator):
    """Preprocessing steps + PLS1, the number of latent variables chosen by K-fold CV.

    The steps are refitted inside every fold (no leakage from held-out spectra into e.g. the
    MSC reference); the chosen model is then refitted on all spectra. For a search over
    preprocessing recipes as well, see :class:`~nirwatch.chemometrics.pls_search.PLSCalibrationCV`.

    Parameters
    ----------
    steps : sequence of transformers
    max_components : int, default 20
    cv : int, default 10
        Folds, shuffled with ``random_state``.
    random_state : int, default 0
    rule : {"min", "1se"}, default "min"
        Minimum RMSECV, or the fewest components within one standard error of it.

    Attributes
    ----------
    best_estimator_ : PLSCalibration
        Refitted on all spectra with ``n_components_`` latent variables.
    n_components_ : int
    rmsecv_ : float
        RMSECV at ``n_components_``.
    cv_results_ : dict
        ``rmsecv`` and ``se`` (A,) for 1..A latent variables, ``folds``, ``rule``.
    oof_pred_ : ndarray (n,)
        Held-out predictions at ``n_components_``.
    """

    def __init__(
        self,
        steps: Sequence[Any] = (),
        max_components: int = 20,
        cv: int = 10,
        random_state: int = 0,
        rule: Rule = "min",
    ) -> None:
        self.steps = steps
        self.max_components = max_components
        self.cv = cv
        self.random_state = random_state
        self.rule = rule

    def fit(self, X: Any, y: Any) -> Self:
        """Cross-validate 1..A latent variables on X (n, p), y (n,), then refit on all."""
        if self.rule not in ("min", "1se"):
            raise DataError(f"rule must be 'min' or '1se', got {self.rule!r}")
        X, y = check_calibration_xy(X, y)
        folds = _cv_folds(X.shape[0], int(self.cv), self.random_state)
        pred = _cv_path_predictions(X, y, self.steps, self.max_components, folds)
        rmsecv, se = _cv_curve(pred, y, folds)
        a = choose_components(rmsecv, se, self.rule)
        model = PLSCalibration(steps=self.steps, n_components=a).fit(X, y)
        if not np.isfinite(model.coef_).all():
            raise ModelError("PLS produced non-finite coefficients")
        self.best_estimator_ = model
        self.n_components_ = a
        self.rmsecv_ = float(rmsecv[a - 1])
        self.cv_results_ = {"rmsecv": rmsecv, "se": se, "folds": int(self.cv), "rule": self.rule}
        self.oof_pred_ = pred[:, a - 1]
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the refitted model, shape (n,)."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)


def select_preprocessing_cv(
    X: Any,
    y: Any,
    candidates: dict[str, Sequence[Any]],
    max_components: int = 20,
    cv: int = 10,
    random_state: int = 0,
    rule: Rule = "min",
) -> tuple[str, PLSComponentsCV, dict[str, float]]:
    """Fit :class:`PLSComponentsCV` for each named preprocessing and keep the lowest RMSECV.

    All candidates share the same folds (same ``random_state``), so their RMSECVs compare.

    Returns
    -------
    name : str
        The chosen candidate.
    search : PLSComponentsCV
        Its fitted search (``best_estimator_`` is the model).
    rmsecv : dict of str to float
        Every candidate's RMSECV at its chosen number of components.
    """
    if not candidates:
        raise DataError("select_preprocessing_cv: no candidate preprocessing given")
    searches = {
        name: PLSComponentsCV(steps, max_components, cv, random_state, rule).fit(X, y)
        for name, steps in candidates.items()
    }
    scores = {name: m.rmsecv_ for name, m in searches.items()}
    best = min(scores, key=scores.__getitem__)
    return best, searches[best], scores
