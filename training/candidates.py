"""The candidate models :func:`training.fit.fit_bundle` chooses among, each with honest
held-out predictions on one shared outer split.

* :func:`fit_pls_candidate`: the PLS search on all calibration data (the served PLS and the
  fallback) plus the same search nested in the outer folds (its honest RMSECV); by default
  twice, the compact and the full candidate set, and the nested errors choose between them.
* :func:`fit_cnn_candidate`: augmentation, then EMSC, then the CNN ensemble (Bjerrum, Glahder &
  Skov 2017, arXiv:1710.01927), one member per outer fold, trained for a fixed number of
  steps with the last weights kept, so each member's fold is a true hold-out.
* :func:`range_end_check`: which model extrapolates better, refitted without the bottom and
  top 10 % of the target and tested on them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.base import clone

from nirwatch.chemometrics.krylov import sample_labels
from nirwatch.chemometrics.pls import PLSCalibration
from nirwatch.chemometrics.pls_average import AveragedPLSCalibration
from nirwatch.chemometrics.pls_search import PLSCalibrationCV
from nirwatch.chemometrics.recipes import compact_recipes, default_recipes
from training.calibration import (
    choose_search,
    cnn_epochs,
    nested_pls_predictions,
    range_end_split,
    rmse,
)
from training.report import ModelEvaluation
from training.settings import TrainingSettings

log = logging.getLogger(__name__)


@dataclass
class PLSCandidate:
    """The searched PLS and its honest out-of-fold predictions."""

    search: PLSCalibrationCV
    nested_oof: np.ndarray
    nested_choices: list[dict[str, Any]]
    seconds: float
    family: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> PLSCalibration:
        return self.search.best_estimator_

    def to_dict(self) -> dict[str, Any]:
        s = self.search
        return {
            "recipe": s.recipe_.to_dict(),
            "n_components": int(s.n_components_),
            "rmsecv_search": float(s.rmsecv_),
            "cv": {"folds": s.cv_results_["folds"], "repeats": s.cv_results_["repeats"]},
            "candidates_searched": len(s.cv_results_["recipes"]),
            "top_recipes": s.summary(8),
            "averaged": s.averaged_,
            "average_rule": "equal-weight mean of up to pls_average recipes whose RMSECV (each at "
            "its own 1-SE latent variables) is within one standard error of the best's",
            "outer_fold_choices": self.nested_choices,
            "candidate_set": self.family,
            "seconds": self.seconds,
        }


@dataclass
class CNNCandidate:
    predictor: Any
    steps: list[Any]
    oof: np.ndarray | None
    info: dict[str, Any]
    fitted: Any
    history: list[list[dict[str, float]]] = field(default_factory=list)


def make_search(
    wl: np.ndarray, s: TrainingSettings, family: str = "full"
) -> Callable[[], PLSCalibrationCV]:
    """A factory of unfitted searches over the ``family`` ("compact" or "full") recipes."""
    recipes = compact_recipes(wl) if family == "compact" else default_recipes(wl)

    def make() -> PLSCalibrationCV:
        return PLSCalibrationCV(
            wavelengths=wl,
            recipes=recipes,
            max_components=s.pls_max_components,
            cv=s.cv_folds,
            repeats=s.cv_repeats,
            rule=s.pls_rule,
            random_state=s.seed,
            max_search_samples=s.search_max_samples,
            max_average=s.pls_average,
        )

    return make


def fit_pls_candidate(
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    folds: np.ndarray,
    say: Callable[[str], None],
    groups: np.ndarray | None = None,
) -> PLSCandidate:
    """The PLS search(es) on all data, nested for honest held-out predictions; with
    ``pls_candidates="auto"`` the compact and the full candidate sets, chosen by
    :func:`training.calibration.choose_search`. ``groups``: replicates share a fold."""
    t0 = time.perf_counter()
    if s.pls_candidates != "auto":
        one = _search_family(X, y, wl, s, folds, say, s.pls_candidates, groups)
        return replace(one, family={"chosen": s.pls_candidates, "rule": "pls_candidates setting"})
    compact = _search_family(X, y, wl, s, folds, say, "compact", groups)
    full = _search_family(X, y, wl, s, folds, say, "full", groups)
    choice = choose_search(y, compact.nested_oof, full.nested_oof, folds)
    chosen = full if choice.name == "full" else compact
    say(
        f"PLS: the {choice.name} search serves (nested RMSECV compact "
        f"{choice.rmsecv['compact']:.4g}, full {choice.rmsecv['full']:.4g})"
    )
    family = {
        "chosen": choice.name,
        "rule": "full only when its nested MSE is lower than the compact one's by more than "
        "one standard error of the paired difference",
        "nested_rmsecv": choice.rmsecv,
        "outer_fold_choices": choice.fold_choices,
        "recipes": {"compact": compact.search.recipe_.name, "full": full.search.recipe_.name},
    }
    return replace(
        chosen,
        nested_oof=choice.nested_pred,
        seconds=time.perf_counter() - t0,
        family=family,
    )


def _search_family(
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    folds: np.ndarray,
    say: Callable[[str], None],
    family: str,
    groups: np.ndarray | None = None,
) -> PLSCandidate:
    """One search on all data, then nested in the outer folds (unless ``nested_cv`` is off)."""
    t0 = time.perf_counter()
    make = make_search(wl, s, family)
    search = make().fit(X, y, groups)
    more = len(search.averaged_) - 1
    say(
        f"PLS ({family}): {search.recipe_.name}, {search.n_components_} LVs "
        + (f"averaged with {more} recipe(s) within 1 SE " if more else "")
        + f"(of {len(search.cv_results_['recipes'])} recipes, {search.cv_results_['folds']}-fold "
        f"CV x {search.cv_results_['repeats']}), RMSECV {search.rmsecv_:.4g}"
    )
    if not s.nested_cv:
        return PLSCandidate(search, search.oof_pred_, [], time.perf_counter() - t0)
    oof, chosen = nested_pls_predictions(
        X, y, folds, make,
        lambda k, m: say(f"PLS ({family}): nested search, outer fold {k}/{m}"),
        groups,
    )  # fmt: skip
    return PLSCandidate(search, oof, chosen, time.perf_counter() - t0)


def _train_config(s: TrainingSettings, n_train: int, progress: bool) -> Any:
    from training.cnn import TrainConfig

    batch = s.mini_batch_size or TrainConfig.batch_size
    epochs = s.epochs or cnn_epochs(n_train, s.augment_copies, batch)
    return TrainConfig(
        batch_size=batch,
        learning_rate=s.learning_rate or TrainConfig.learning_rate,
        epochs=epochs,
        patience=s.patience or epochs,
        restore_best=False,
        seed=s.seed,
        deterministic=s.deterministic,
        device=s.device,
        progress=progress,
    )


def cnn_fits(n_points: int) -> bool:
    """Whether the default network's kernels and pooling fit ``n_points`` inputs."""
    from nirwatch.chemometrics.cnn import CNNConfig
    from nirwatch.errors import ModelError

    try:
        CNNConfig().with_input_length(n_points)
    except ModelError:
        return False
    return True


def cnn_steps(wl: np.ndarray, s: TrainingSettings, pls: PLSCandidate) -> list[Any]:
    """The CNN's preprocessing: the PLS search's (lead recipe's) wavelength range (unless set),
    then EMSC."""
    from nirwatch.chemometrics.scatter import ExtendedMultiplicativeScatterCorrection
    from nirwatch.chemometrics.selection import WavelengthRange

    start, stop = s.cnn_start_nm, s.cnn_stop_nm
    if start is None and stop is None:
        start, stop = pls.search.recipe_.start, pls.search.recipe_.stop
        inside = np.sum((wl >= (start if start is not None else -np.inf))
                        & (wl <= (stop if stop is not None else np.inf)))  # fmt: skip
        if not cnn_fits(int(inside)):
            start = stop = None  # the PLS window is too short for the network: the whole axis
    steps: list[Any] = []
    if start is not None or stop is not None:
        # Selected before augmentation and EMSC (training.cnn.split_augmentation_steps).
        steps.append(WavelengthRange(wl, start=start, stop=stop))
    steps.append(ExtendedMultiplicativeScatterCorrection(order=s.emsc_order))
    return steps


def fit_cnn_candidate(
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    folds: np.ndarray,
    pls: PLSCandidate,
    progress: bool,
    groups: np.ndarray | None = None,
) -> CNNCandidate:
    """The CNN ensemble on the outer folds (or one network on a validation split; with
    ``groups``, of whole samples)."""
    from nirwatch.chemometrics.augmentation import SpectralAugmenter
    from nirwatch.chemometrics.cnn import CNNConfig
    from training.cnn import fit_cnn
    from training.cnn_ensemble import fit_cnn_ensemble

    steps = cnn_steps(wl, s, pls)
    augmenter = (
        SpectralAugmenter(n_copies=s.augment_copies, random_state=s.seed)
        if s.augment_copies > 0
        else None
    )
    config = CNNConfig()
    n_members = int(folds.max()) + 1
    oof: np.ndarray | None = None
    if s.cnn_members > 1:
        train = _train_config(s, int(np.sum(folds != 0)), progress)
        fitted = fit_cnn_ensemble(
            X, y, config, steps=steps, augmenter=augmenter, train=train, folds=folds
        )
        oof = fitted.oof_pred
    else:
        # One network: a seeded validation split carved from the calibration data; it gives
        # no out-of-fold predictions, so the CNN then serves without a comparison.
        val, tr = validation_split(X.shape[0], s.validation_fraction, s.seed, groups)
        train = _train_config(s, tr.size, progress)
        fitted = fit_cnn(
            X[tr], y[tr], X[val], y[val], config, steps=steps, augmenter=augmenter, train=train
        )
        n_members = 1
    info = {
        "members": n_members,
        "epochs": train.epochs,
        "augment_copies": s.augment_copies,
        "emsc_order": s.emsc_order,
        "wavelength_range": [steps[0].start, steps[0].stop] if len(steps) > 1 else [None, None],
        "config": config.to_dict(),
    }
    return CNNCandidate(fitted.predictor, fitted.steps, oof, info, fitted, fitted.history)


def validation_split(
    n: int, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) row indices: a seeded share of the spectra, or of the samples
    when ``groups`` names them (a sample's replicates stay on one side)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        n_val = max(2, int(round(fraction * n)))
        return np.sort(order[:n_val]), np.sort(order[n_val:])
    labels = sample_labels(groups)
    g = int(labels.max()) + 1
    held = rng.permutation(g)[: max(1, int(round(fraction * g)))]
    val = np.isin(labels, held)
    return np.flatnonzero(val), np.flatnonzero(~val)


def range_end_check(
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    pls: PLSCandidate,
    cnn: CNNCandidate | None,
    weight: float,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Refit without the bottom and top 10 % of ``y``, predict them; RMSE per model.

    PLS keeps its chosen recipe(s) and components (capped by the smaller set); the CNN is one
    network with the same settings. The model with the lowest RMSE on the ends serves
    predictions at the range ends (:class:`nirwatch.models.bundle_predictor.LoadedBundle`).
    """
    mid, ends = range_end_split(y, s.extrapolation_fraction, groups)
    preds = {"pls": refit_pls(pls.model, X[mid], y[mid]).predict(X[ends])}
    if cnn is not None and cnn.oof is not None and weight > 0:
        from nirwatch.chemometrics.augmentation import SpectralAugmenter
        from nirwatch.chemometrics.cnn import CNNConfig
        from training.cnn import fit_cnn

        augmenter = (
            SpectralAugmenter(n_copies=s.augment_copies, random_state=s.seed)
            if s.augment_copies > 0
            else None
        )
        train = _train_config(s, int(mid.sum()), progress=False)
        net = fit_cnn(
            X[mid], y[mid], X[ends], y[ends], CNNConfig(),
            steps=cnn_steps(wl, s, pls), augmenter=augmenter, train=train,
        )  # fmt: skip
        preds["cnn"] = net.predict(X[ends])
        if 0 < weight < 1:
            preds["blend"] = weight * preds["cnn"] + (1 - weight) * preds["pls"]
    errors = {name: rmse(p, y[ends]) for name, p in preds.items()}
    best = min(errors, key=errors.__getitem__)
    return {
        "model": best,
        "rmse_at_ends": errors,
        "n_ends": int(ends.sum()),
        "fraction": s.extrapolation_fraction,
    }


def refit_pls(model: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """``model`` (a PLSCalibration or an average of them) refitted on X, y with the same
    recipes, each member's latent variables capped at ``n - 2``."""
    members = model.calibrations_ if isinstance(model, AveragedPLSCalibration) else [model]
    fresh = [
        PLSCalibration(
            steps=[clone(step) for step in m.steps],
            n_components=max(1, min(int(m.n_components_), X.shape[0] - 2)),
        )
        for m in members
    ]
    return (fresh[0] if len(fresh) == 1 else AveragedPLSCalibration(fresh)).fit(X, y)


def evaluation(
    name: str,
    y: np.ndarray,
    oof: np.ndarray,
    label: str,
    y_test: np.ndarray | None,
    test_pred: np.ndarray | None,
    **extra: Any,
) -> ModelEvaluation:
    return ModelEvaluation(
        name=name,
        cv_true=y,
        cv_pred=np.asarray(oof, dtype=float),
        cv_label=label,
        test_true=y_test,
        test_pred=test_pred,
        extra=extra,
    )
