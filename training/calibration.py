"""Which model serves, chosen the honest way: nested cross-validation, blends, intervals.

The pieces :func:`training.fit.fit_bundle` puts together:

* :func:`nested_pls_predictions`: the whole PLS search (:class:`PLSCalibrationCV`: recipe,
  range, latent variables) repeated inside outer folds, so the held-out predictions carry the
  cost of the selection itself (Varma & Simon 2006, BMC Bioinformatics 7:91; Cawley & Talbot
  2010, JMLR 11, 2079-2107).
* :func:`choose_search`: the full PLS search or the compact one (16 common recipes), by their
  nested errors with a one-standard-error preference for the compact one; chosen again inside
  each outer fold so that its reported error stays honest.
* :func:`choose_blend`: ``w * CNN + (1 - w) * PLS`` with ``w`` on a grid from the out-of-fold
  predictions; ``w = 0`` is PLS, ``w = 1`` the CNN. Its honest error chooses ``w`` on the other
  outer folds for each fold.
* :func:`conformal_quantile`: split-conformal quantile of normalised out-of-fold residuals
  (Lei et al. 2018, JASA 113, 1094-1111, normalised scores as in their sec. 5.2).
* :func:`range_end_split`: the extrapolation check's split (bottom and top 10 % of the target
  held out), fixed on calibration data.
* :func:`cnn_epochs`: the CNN's training length from the data size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nirwatch.chemometrics.diagnostics import leverage_scale
from nirwatch.chemometrics.krylov import sample_labels
from nirwatch.chemometrics.pls_search import PLSCalibrationCV
from nirwatch.errors import DataError

__all__ = [
    "BLEND_GRID",
    "BlendChoice",
    "SearchChoice",
    "choose_blend",
    "choose_search",
    "cnn_epochs",
    "conformal_quantile",
    "cross_validated_coverage",
    "leverage_scale",
    "nested_pls_predictions",
    "range_end_split",
    "rmse",
]

#: CNN weights tried for the blend (0 = PLS alone, 1 = CNN alone).
BLEND_GRID = np.round(np.linspace(0.0, 1.0, 21), 2)
#: Optimiser steps a CNN member gets: about what the shootout's 80 epochs of 155 spectra x 11
#: copies at batch 128 gave, stated as steps so that it carries over to other data sizes.
CNN_TARGET_STEPS = 1000


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def nested_pls_predictions(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    make_search: Callable[[], PLSCalibrationCV],
    on_fold: Callable[[int, int], None] | None = None,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Held-out predictions of the whole PLS search, rerun inside each outer fold.

    Parameters
    ----------
    folds : ndarray (n,) of int
        Outer fold of each spectrum (0..K-1).
    make_search : callable returning an unfitted PLSCalibrationCV
    groups : ndarray (n,), optional
        Sample labels: the inner searches keep replicates in one fold too.

    Returns
    -------
    pred : ndarray (n,)
    chosen : list of dict
        Per outer fold: the recipe and components its inner search chose.
    """
    pred = np.empty_like(y, dtype=np.float64)
    chosen: list[dict[str, Any]] = []
    k_max = int(folds.max()) + 1
    for k in range(k_max):
        test = folds == k
        # Only the fitted search predicts here: no held-out pass of its own is needed.
        inner = None if groups is None else groups[~test]
        search = make_search().set_params(held_out=False).fit(X[~test], y[~test], inner)
        pred[test] = search.predict(X[test])
        chosen.append(
            {
                "recipe": search.recipe_.name,
                "n_components": search.n_components_,
                "averaged": len(search.averaged_),
            }
        )
        if on_fold is not None:
            on_fold(k + 1, k_max)
    return pred, chosen


@dataclass(frozen=True)
class SearchChoice:
    """Which PLS search serves ("compact" or "full") and its honest error.

    Attributes
    ----------
    name : str
        Chosen on all out-of-fold predictions.
    nested_pred : ndarray (n,)
        Each outer fold predicted by the search chosen on the other folds.
    fold_choices : list of str
    rmsecv : dict of str to float
        Each search's nested RMSECV.
    """

    name: str
    nested_pred: np.ndarray
    fold_choices: list[str]
    rmsecv: dict[str, float]


def _prefer_full(y: np.ndarray, compact: np.ndarray, full: np.ndarray) -> bool:
    """The full search only when its mean squared error is lower than the compact one's by
    more than one standard error of the paired per-spectrum difference: the one-standard-error
    rule (Hastie, Tibshirani & Friedman, ESL 2nd ed., sec. 7.10) applied to the two procedures,
    the compact one being the simpler."""
    d = (full - y) ** 2 - (compact - y) ** 2
    if d.size < 2:
        return False
    return bool(d.mean() + d.std(ddof=1) / math.sqrt(d.size) < 0)


def choose_search(
    y: np.ndarray, compact_oof: np.ndarray, full_oof: np.ndarray, folds: np.ndarray
) -> SearchChoice:
    """Choose between the compact and the full PLS search from their nested out-of-fold
    predictions (both on ``folds``), and estimate the error of choosing by nested CV."""
    y, compact_oof, full_oof = (np.asarray(a, dtype=np.float64) for a in (y, compact_oof, full_oof))
    nested = np.empty_like(y)
    choices: list[str] = []
    for k in range(int(folds.max()) + 1):
        test = folds == k
        full = _prefer_full(y[~test], compact_oof[~test], full_oof[~test])
        nested[test] = (full_oof if full else compact_oof)[test]
        choices.append("full" if full else "compact")
    return SearchChoice(
        name="full" if _prefer_full(y, compact_oof, full_oof) else "compact",
        nested_pred=nested,
        fold_choices=choices,
        rmsecv={"compact": rmse(compact_oof, y), "full": rmse(full_oof, y)},
    )


@dataclass(frozen=True)
class BlendChoice:
    """The served combination and its honest error.

    Attributes
    ----------
    weight : float
        CNN weight chosen on all out-of-fold predictions.
    nested_pred : ndarray (n,)
        Each fold predicted with the weight chosen on the other folds.
    fold_weights : list of float
    rmse_by_weight : dict of float to float
        Out-of-fold RMSE of every weight on the grid (chosen on these: optimistic).
    """

    weight: float
    nested_pred: np.ndarray
    fold_weights: list[float]
    rmse_by_weight: dict[float, float]

    @property
    def model(self) -> str:
        return "pls" if self.weight == 0 else ("cnn" if self.weight == 1 else "blend")


def _best_weight(y: np.ndarray, cnn: np.ndarray, pls: np.ndarray) -> float:
    errors = [rmse(w * cnn + (1 - w) * pls, y) for w in BLEND_GRID]
    # Ties (within 0.1 %) go to the smaller CNN weight: PLS is the simpler, better-understood model.
    best = min(errors)
    return float(BLEND_GRID[next(i for i, e in enumerate(errors) if e <= best * 1.001)])


def choose_blend(
    y: np.ndarray, cnn_oof: np.ndarray, pls_oof: np.ndarray, folds: np.ndarray
) -> BlendChoice:
    """Choose the CNN weight, and estimate the error of choosing it by nested CV.

    Both predictions must be out-of-fold with respect to ``folds`` (the same outer split).
    """
    y, cnn_oof, pls_oof = (np.asarray(a, dtype=np.float64) for a in (y, cnn_oof, pls_oof))
    if not (np.isfinite(cnn_oof).all() and np.isfinite(pls_oof).all()):
        raise DataError("choose_blend: non-finite out-of-fold predictions")
    nested = np.empty_like(y)
    fold_weights: list[float] = []
    for k in range(int(folds.max()) + 1):
        test = folds == k
        w = _best_weight(y[~test], cnn_oof[~test], pls_oof[~test])
        nested[test] = w * cnn_oof[test] + (1 - w) * pls_oof[test]
        fold_weights.append(w)
    return BlendChoice(
        weight=_best_weight(y, cnn_oof, pls_oof),
        nested_pred=nested,
        fold_weights=fold_weights,
        rmse_by_weight={float(w): rmse(w * cnn_oof + (1 - w) * pls_oof, y) for w in BLEND_GRID},
    )


def conformal_quantile(residuals: np.ndarray, scale: np.ndarray, level: float = 0.95) -> float:
    """Split-conformal quantile of ``|residual| / scale``: the ``ceil((n + 1) level)``-th
    smallest score; infinite when n is too small for the level.

    An interval ``value ± quantile * scale`` then covers a new exchangeable observation with
    probability at least ``level`` (Lei et al. 2018, sec. 2.2). Out-of-fold residuals of models
    fitted on (K-1)/K of the data are, if anything, a little larger than those of the final
    model, so the intervals err on the wide side.
    """
    if not 0 < level < 1:
        raise DataError(f"interval level must be in (0, 1), got {level}")
    scores = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)) / np.asarray(scale))
    scores = scores[np.isfinite(scores)]
    k = math.ceil((scores.size + 1) * level)
    return float(scores[k - 1]) if k <= scores.size else math.inf


def cross_validated_coverage(
    residuals: np.ndarray, scale: np.ndarray, folds: np.ndarray, level: float = 0.95
) -> float | None:
    """Share of held-out residuals inside intervals calibrated without them (None when some
    residual is not finite: a model without held-out predictions).

    For each outer fold, the conformal quantile of the other folds' normalised residuals;
    then whether each of this fold's residuals lies within ``quantile * scale``. A check of
    the intervals on calibration data alone, before any test set: near ``level`` when the
    scale tracks difficulty the same way across the folds.
    """
    residuals = np.asarray(residuals, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if not np.isfinite(residuals).all():
        return None
    covered = np.zeros(residuals.size, dtype=bool)
    for k in range(int(folds.max()) + 1):
        test = folds == k
        q = conformal_quantile(residuals[~test], scale[~test], level)
        covered[test] = np.abs(residuals[test]) <= q * scale[test]
    return float(covered.mean())


def range_end_split(
    y: np.ndarray, fraction: float = 0.1, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(middle, ends) masks: the bottom and top ``fraction`` of the target held out (>= 2 each);
    with ``groups``, of the samples by their mean target, all replicates with their sample."""
    y = np.asarray(y, dtype=np.float64)
    if groups is not None:
        labels = sample_labels(groups)
        means = np.bincount(labels, weights=y) / np.bincount(labels)
        _, ends_of_group = range_end_split(means, fraction)
        return ~ends_of_group[labels], ends_of_group[labels]
    k = max(2, int(round(fraction * y.size)))
    order = np.argsort(y, kind="stable")
    ends = np.zeros(y.size, dtype=bool)
    ends[order[:k]] = True
    ends[order[-k:]] = True
    return ~ends, ends


def cnn_epochs(n_train: int, copies: int, batch_size: int) -> int:
    """Epochs for about :data:`CNN_TARGET_STEPS` optimiser steps, within 30..400."""
    steps_per_epoch = max(1, math.ceil(n_train * (copies + 1) / batch_size))
    return int(np.clip(round(CNN_TARGET_STEPS / steps_per_epoch), 30, 400))
