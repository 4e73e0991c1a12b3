"""PLS calibration chosen by cross-validation: preprocessing recipe, wavelength range and
number of latent variables, searched jointly and fast.

A *recipe* is a wavelength range, then a scatter correction (none, SNV, MSC, EMSC of order 1
or 2), then an optional Savitzky-Golay derivative, then optionally autoscaling (every wavelength
to unit variance: scikit-learn's ``PLSRegression()`` default). :class:`PLSCalibrationCV` scores every recipe
with every number of latent variables by repeated K-fold CV; each recipe gets the fewest latent
variables within one standard error of its own best (Hastie, Tibshirani & Friedman, ESL 2nd ed., sec. 7.10), then
the recipe with the lowest RMSECV there.

Why it is fast: every recipe is scored from one Gram matrix of its preprocessed spectra, all
folds and numbers of components at once (:mod:`nirwatch.chemometrics.krylov`).

Scatter references (MSC/EMSC mean spectrum) are fitted on all spectra given to ``fit`` — they
use no reference values. The honest error of the whole search, selection included, comes from
repeating it inside outer folds (:mod:`training.calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from nirwatch.chemometrics.krylov import FoldIndex, cv_splits, fold_kernels, krylov_pls_predictions
from nirwatch.chemometrics.pls import PLSCalibration, check_calibration_xy
from nirwatch.chemometrics.pls_average import AveragedPLSCalibration, one_se_tied
from nirwatch.chemometrics.recipes import Recipe, default_recipes, recipe_transforms
from nirwatch.errors import DataError, ModelError

__all__ = [
    "PLSCalibrationCV",
    "spread_subset",
]


def spread_subset(y: np.ndarray, m: int) -> np.ndarray:
    """Indices of all spectra, or of ``m`` spread evenly over the sorted reference values."""
    if y.size <= m:
        return np.arange(y.size)
    order = np.argsort(y, kind="stable")
    return np.sort(order[np.round(np.linspace(0, y.size - 1, m)).astype(np.int64)])


def default_repeats(n: int) -> int:
    """Repeats of K-fold CV: more for small sets, where one split's luck matters most."""
    return int(np.clip(round(400 / max(n, 1)), 1, 5))


class PLSCalibrationCV(RegressorMixin, BaseEstimator):
    """PLS with recipe (range, scatter correction, derivative) and latent variables chosen by
    repeated K-fold CV, one-standard-error rule across the whole grid.

    Parameters
    ----------
    wavelengths : array-like (p,)
        The spectra's axis (for the range candidates).
    recipes : sequence of Recipe, optional
        Default :func:`default_recipes`.
    max_components : int, default 40
        Upper bound; the data lower it (``n_train - 2`` spectra in the smallest fold, points).
    cv : int, default 10
    repeats : int, optional
        Repeats of K-fold with different shuffles; default :func:`default_repeats` of n.
    rule : {"1se", "min"}
        Components per recipe: ``"1se"`` the fewest within one standard error of that
        recipe's minimum RMSECV; ``"min"`` the minimum. Then the recipe with the lowest RMSECV
        at its number of components wins (within 0.1 %, the one with fewer steps).
    random_state : int
    max_search_samples : int, default 500
        Above this many spectra the search runs on this many, spread evenly over the
        reference values (its cost grows with n^2); the chosen model is refitted on all.
    max_average : int, default 1
        Serve the equal-weight average of up to this many recipes whose RMSECV (each at its
        own number of components) lies within one standard error of the winner's
        (:class:`~nirwatch.chemometrics.pls_average.AveragedPLSCalibration`); 1 serves the
        winner alone.
    held_out : bool, default True
        Compute ``oof_pred_``. Above ``max_search_samples`` spectra that costs one K-fold pass
        on all of them per served recipe; False skips it where only the fitted model is used
        (the search rerun inside outer folds).

    Attributes
    ----------
    best_estimator_ : PLSCalibration or AveragedPLSCalibration, refitted on all data
    recipe_ : Recipe
        The winner's (the average's lead member).
    n_components_ : int
    averaged_ : list of dict
        The served members (recipe name, components, RMSECV), the winner first.
    rmsecv_ : float
        RMSECV of the chosen (recipe, components); optimistic, being a selected minimum.
    cv_results_ : dict
        ``recipes`` (names), ``rmsecv`` (C, A) and ``se`` (C, A) arrays (NaN past a recipe's
        last component), ``folds``, ``repeats``; ``score`` (C,), each recipe's RMSECV at its
        own number of components ``n_components`` (C,) (inf: not scored).
    oof_pred_ : ndarray (n,)
        Held-out predictions of the served model (the members' mean), averaged over repeats
        (with ``held_out=True``).
    """

    def __init__(
        self,
        wavelengths: Any = None,
        recipes: Sequence[Recipe] | None = None,
        max_components: int = 40,
        cv: int = 10,
        repeats: int | None = None,
        rule: str = "1se",
        random_state: int = 0,
        max_search_samples: int = 500,
        max_average: int = 1,
        held_out: bool = True,
    ) -> None:
        self.held_out = held_out
        self.max_search_samples = max_search_samples
        self.max_average = max_average
        self.wavelengths = wavelengths
        self.recipes = recipes
        self.max_components = max_components
        self.cv = cv
        self.repeats = repeats
        self.rule = rule
        self.random_state = random_state

    def fit(self, X: Any, y: Any, groups: Any = None) -> Self:
        """Search the grid on X (n, p), y (n,), then refit the chosen model on all of X.

        ``groups`` (n,), optional: spectra sharing a value (replicate scans of one sample) are
        kept in one fold of every split.
        """
        X, y = check_calibration_xy(X, y)
        n, p = X.shape
        wl, groups, recipes = self._check_inputs(n, p, groups)
        # The search costs n^2 per recipe: above max_search_samples it runs on that many
        # spectra spread evenly over the reference values; the winner is refitted on all.
        sub = spread_subset(y, self.max_search_samples)
        Xs, ys = X[sub], y[sub]
        repeats = self.repeats or default_repeats(sub.size)
        sub_groups = None if groups is None else groups[sub]
        units = sub.size if sub_groups is None else np.unique(sub_groups).size
        folds = min(int(self.cv), units)  # folds of samples: replicates never split
        idx = FoldIndex(cv_splits(sub.size, folds, repeats, self.random_state, sub_groups))
        A = max(1, min(int(self.max_components), int(idx.n_train.min()) - 2, p))
        rmse = np.full((len(recipes), A), np.nan)
        se = np.full((len(recipes), A), np.nan)
        oof: dict[int, np.ndarray] = {}
        # Many small products: one BLAS thread is several times faster than a contended pool.
        with threadpool_limits(limits=1, user_api="blas"):
            self._search(Xs, ys, wl, recipes, idx, A, rmse, se, oof, folds)
        if np.isnan(rmse).all():
            raise ModelError("PLSCalibrationCV: no recipe gave finite preprocessed spectra")
        c, per_recipe, score = self._choose(rmse, se, recipes)
        a = int(per_recipe[c])
        self.recipe_ = recipes[c]
        self.n_components_ = a + 1
        self.rmsecv_ = float(rmse[c, a])
        self.cv_results_: dict[str, Any] = {
            "recipes": [r.name for r in recipes],
            "rmsecv": rmse,
            "se": se,
            "folds": folds,
            "repeats": repeats,
            "n_searched": int(sub.size),
            "score": score,
            "n_components": per_recipe + 1,
        }
        self._serve(X, y, wl, recipes, per_recipe, score, se, c, oof if sub.size == n else None,
                    idx, groups)  # fmt: skip
        return self

    def _check_inputs(
        self, n: int, p: int, groups: Any
    ) -> tuple[np.ndarray, np.ndarray | None, list[Recipe]]:
        """(wavelengths, groups, recipes), checked against n spectra of p points."""
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (n,):
                raise DataError(
                    f"PLSCalibrationCV: expected groups of shape ({n},), got {groups.shape}"
                )
        wl = (
            np.arange(p, dtype=float)
            if self.wavelengths is None
            else np.asarray(self.wavelengths, dtype=np.float64)
        )
        if wl.shape != (p,):
            raise DataError(f"PLSCalibrationCV: expected {p} wavelengths, got {wl.shape}")
        if p > 1 and not np.all(np.diff(wl) > 0):
            # The range candidates select by wavelength on an increasing axis.
            raise DataError(
                f"PLSCalibrationCV: expected increasing wavelengths, got {wl[0]:g} ... {wl[-1]:g}"
            )
        if self.rule not in ("1se", "min"):
            raise DataError(f"rule must be '1se' or 'min', got {self.rule!r}")
        recipes = list(self.recipes) if self.recipes is not None else default_recipes(wl)
        if not recipes:
            raise DataError("PLSCalibrationCV: no candidate recipe")
        return wl, groups, recipes

    def _serve(
        self,
        X: np.ndarray,
        y: np.ndarray,
        wl: np.ndarray,
        recipes: list[Recipe],
        per_recipe: np.ndarray,
        score: np.ndarray,
        se: np.ndarray,
        c: int,
        oof: dict[int, np.ndarray] | None,
        idx: FoldIndex,
        groups: np.ndarray | None,
    ) -> None:
        """The served model: the winner ``c`` and its 1-SE ties, their held-out predictions
        (``oof``: the search's own, when it ran on every spectrum) and the refit on all."""
        tied_se = se[np.arange(len(recipes)), per_recipe]
        members = one_se_tied(score, np.nan_to_num(tied_se), c, int(self.max_average))
        self.averaged_ = [
            {
                "recipe": recipes[i].name,
                "n_components": int(per_recipe[i]) + 1,
                "rmsecv": float(score[i]),
            }
            for i in members
        ]
        if self.held_out:
            self.oof_pred_ = np.mean(
                [
                    self._held_out(X, y, wl, recipes[i], int(per_recipe[i]),
                                   None if oof is None else oof[i], idx, groups)
                    for i in members
                ],
                axis=0,
            )  # fmt: skip
        calibrations = [
            PLSCalibration(steps=recipes[i].steps(wl), n_components=int(per_recipe[i]) + 1)
            for i in members
        ]
        self.best_estimator_ = (
            calibrations[0] if len(calibrations) == 1 else AveragedPLSCalibration(calibrations)
        ).fit(X, y)
        self.n_features_in_ = X.shape[1]

    def _held_out(
        self,
        X: np.ndarray,
        y: np.ndarray,
        wl: np.ndarray,
        recipe: Recipe,
        a: int,
        searched: np.ndarray | None,
        idx: FoldIndex,
        groups: np.ndarray | None,
    ) -> np.ndarray:
        """One member's held-out predictions for every spectrum (from the search's own when
        it ran on all of them: ``searched``; else one K-fold pass on all).

        The pass on all spectra fits each fold's PLS in the spectra's space (memory n x p)
        rather than from fold kernels (F x n x n: 1.6 GB for 10 folds of 5,000 spectra).
        """
        n = y.size
        if searched is not None:
            return self._oof(searched[:, :, a], idx, n)
        Z = recipe_transforms(X, wl, [recipe])[recipe]
        assert Z is not None  # the search fitted this recipe on these spectra
        pred = np.empty(n)
        for train, test in cv_splits(n, self.cv_results_["folds"], 1, self.random_state, groups):
            k = min(a + 1, train.size - 1, Z.shape[1])
            fold = PLSCalibration(n_components=k).fit(Z[train], y[train])
            pred[test] = fold.predict_preprocessed(Z[test])
        return pred

    def _search(
        self,
        X: np.ndarray,
        y: np.ndarray,
        wl: np.ndarray,
        recipes: Sequence[Recipe],
        idx: FoldIndex,
        A: int,
        rmse: np.ndarray,
        se: np.ndarray,
        oof: dict[int, np.ndarray],
        folds: int,
    ) -> None:
        """Fill ``rmse``/``se`` (C, A) and the held-out predictions per recipe."""
        for c, Z in enumerate(recipe_transforms(X, wl, recipes).values()):
            if Z is None or not np.isfinite(Z).all():
                continue  # e.g. SNV of a flat spectrum: this recipe cannot serve these data
            pred = self._cv_predict(Z, y, idx, A)  # (F, M, A')
            err = (pred - y[idx.test][:, :, None]) ** 2 * idx.test_mask[:, :, None]
            a = err.shape[2]
            rmse[c, :a] = np.sqrt(err.sum(axis=(0, 1)) / idx.test_mask.sum())
            fold_rmse = np.sqrt(err.sum(axis=1) / idx.n_test[:, None])  # (F, A')
            se[c, :a] = fold_rmse.std(axis=0, ddof=1) / np.sqrt(folds)
            oof[c] = pred

    @staticmethod
    def _cv_predict(Z: np.ndarray, y: np.ndarray, idx: FoldIndex, A: int) -> np.ndarray:
        G = Z @ Z.T
        K, Ks, yc, ymean = fold_kernels(G, y, idx)
        pred, _ = krylov_pls_predictions(K, Ks, yc, A)
        return pred + ymean[:, None, None]

    def _choose(
        self, rmse: np.ndarray, se: np.ndarray, recipes: Sequence[Recipe]
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """(recipe, components - 1 per recipe, RMSECV per recipe at those): per recipe the 1-SE
        number of components, then the recipe with the lowest RMSECV there (ties within 0.1 %
        to the simpler recipe); inf for a recipe that could not be scored."""
        filled = np.where(np.isnan(rmse), np.inf, rmse)
        per_recipe = np.empty(len(recipes), dtype=np.int64)
        for c in range(len(recipes)):
            best = int(np.argmin(filled[c]))
            if self.rule == "1se" and np.isfinite(filled[c, best]):
                best = int(np.flatnonzero(filled[c] <= filled[c, best] + se[c, best])[0])
            per_recipe[c] = best
        score = filled[np.arange(len(recipes)), per_recipe]
        top = float(score.min())
        cands = [
            (recipes[i].complexity, float(score[i]), i)
            for i in np.flatnonzero(score <= top * 1.001).tolist()
        ]
        best = min(cands)[2]
        return best, per_recipe, score

    @staticmethod
    def _oof(pred: np.ndarray, idx: FoldIndex, n: int) -> np.ndarray:
        total, count = np.zeros(n), np.zeros(n)
        np.add.at(total, idx.test[idx.test_mask], pred[idx.test_mask])
        np.add.at(count, idx.test[idx.test_mask], 1.0)
        return total / np.maximum(count, 1)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the refitted best model, shape (n,)."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)

    def summary(self, top: int = 10) -> list[dict[str, Any]]:
        """The best ``top`` recipes by their minimum RMSECV (for reports)."""
        check_is_fitted(self, "cv_results_")
        rmse = np.where(np.isnan(self.cv_results_["rmsecv"]), np.inf, self.cv_results_["rmsecv"])
        best = rmse.min(axis=1)
        order = np.argsort(best)[:top]
        return [
            {
                "recipe": self.cv_results_["recipes"][c],
                "rmsecv": float(best[c]),
                "n_components": int(np.argmin(rmse[c])) + 1,
            }
            for c in order
            if np.isfinite(best[c])
        ]
