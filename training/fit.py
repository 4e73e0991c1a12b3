"""Fit a complete model bundle: PLS (always, the fallback), CNN (optional), diagnostics, report.

* PLS: MSC, then a Savitzky-Golay first derivative, latent variables by K-fold CV
  (:func:`nirwatch.chemometrics.pls.fit_pls_cv`) — the reference PLS of issue 3.
* CNN: spectral augmentation followed by EMSC, then the 1-D CNN (Bjerrum, Glahder & Skov
  2017, arXiv:1710.01927); by default :func:`training.cnn.fit_cnn_ensemble` (one network per
  stratified fold, early-stopped on it, so the out-of-fold predictions are the CNN's RMSECV),
  or :func:`training.cnn.fit_cnn` with a validation split when ``cnn_members`` is 1. Never
  anything of the test rows: they only give RMSEP.
* Calibration statistics: PCA of the PLS-preprocessed calibration spectra with as many
  components as PLS latent variables; Hotelling T² and Q limits at 95 / 99 %.
* Fallback limit: ``fallback_k × RMSECV`` of PLS. Two predictions that each err by about
  RMSECV differ by about √2 × RMSECV, so k = 3 flags only clear disagreements.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold

from nirwatch.bundle import BundleContents, data_hash, write_bundle
from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.diagnostics import CalibrationStatistics
from nirwatch.chemometrics.pls import PLSCalibration, fit_pls_cv
from nirwatch.chemometrics.scatter import MultiplicativeScatterCorrection
from nirwatch.errors import DataError
from training.report import ModelEvaluation, build_report
from training.settings import TrainingSettings

log = logging.getLogger(__name__)

ModelChoice = Literal["both", "cnn", "pls"]
#: Fewest calibration spectra accepted: K-fold CV and a CNN validation split need a few each.
MIN_SAMPLES = 20


@dataclass
class _CNNResult:
    predictor: Any
    steps: list[Any]
    evaluation: ModelEvaluation
    history: list[list[dict[str, float]]] = field(default_factory=list)
    activations: np.ndarray | None = None
    reference: np.ndarray | None = None
    wavelengths: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def check_training_data(
    X: Any, y: Any, wavelengths: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate training data, returning float64 arrays X (n, p), y (n,), wavelengths (p,).

    Raises
    ------
    DataError
        Naming the problem: shapes, NaN rows, too few samples, constant target.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    wl = np.asarray(wavelengths, dtype=np.float64)
    if X.ndim != 2:
        raise DataError(f"expected spectra of shape (n, n_points), got {X.shape}")
    if y.shape != (X.shape[0],):
        raise DataError(f"expected y of shape ({X.shape[0]},) to match the spectra, got {y.shape}")
    if wl.shape != (X.shape[1],):
        raise DataError(f"expected {X.shape[1]} wavelengths to match the spectra, got {wl.shape}")
    if X.shape[0] < MIN_SAMPLES:
        raise DataError(f"too few samples: {X.shape[0]} spectra, at least {MIN_SAMPLES} needed")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise DataError(f"non-finite absorbances in {bad.size} spectra, rows {bad[:20].tolist()}")
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise DataError(f"non-finite target in {bad.size} rows, rows {bad[:20].tolist()}")
    if np.ptp(y) == 0:
        raise DataError(
            f"the target is constant ({y[0]:g}) over {y.size} rows: nothing to calibrate"
        )
    return X, y, wl


def pls_steps(settings: TrainingSettings) -> list[Any]:
    """The PLS preprocessing: MSC, then a Savitzky-Golay first derivative."""
    return [
        MultiplicativeScatterCorrection(),
        SavitzkyGolay(window_length=settings.sg_window, polyorder=settings.sg_polyorder, deriv=1),
    ]


def cv_predictions(
    model: PLSCalibration, X: np.ndarray, y: np.ndarray, folds: int, seed: int
) -> np.ndarray:
    """Held-out predictions of ``model``'s pipeline with its chosen components, same folds as CV."""
    pred = np.empty_like(y)
    for train, test in KFold(n_splits=folds, shuffle=True, random_state=seed).split(X):
        fold = PLSCalibration(
            steps=[clone(s) for s in model.steps], n_components=model.n_components_
        )
        pred[test] = fold.fit(X[train], y[train]).predict(X[test])
    return pred


def fit_bundle(
    X: Any,
    y: Any,
    wavelengths: Any,
    *,
    target: str,
    unit: str,
    model: ModelChoice = "both",
    out_dir: str | Path,
    settings: TrainingSettings | None = None,
    X_test: Any = None,
    y_test: Any = None,
    hmac_key: str | bytes | None = None,
    progress: bool = False,
    **overrides: Any,
) -> Path:
    """Fit PLS (always) and the CNN (``model`` "cnn" or "both") and write a bundle.

    Parameters
    ----------
    X : array-like (n, p)
        Calibration spectra.
    y : array-like (n,)
        Reference values of ``target`` in ``unit``.
    wavelengths : array-like (p,)
    model : {"both", "cnn", "pls"}
        "cnn" and "both" both store the two models (PLS is the fallback and the sanity check).
    out_dir : path
        Bundle directory to create (must not exist).
    settings : TrainingSettings, optional
        Hyper-parameters; ``overrides`` (e.g. ``epochs=5``) replace individual fields.
    X_test, y_test : array-like, optional
        Rows not used for fitting: RMSEP, test bias and R² in the manifest and report.
    hmac_key : optional
        Sign the manifest.
    progress : bool
        Show progress (stage lines, and the CNN's per-epoch bar) on stderr.

    Returns
    -------
    Path of the written bundle.
    """
    if model not in ("both", "cnn", "pls"):
        raise DataError(f"model must be 'both', 'cnn' or 'pls', got {model!r}")
    s = _settings(settings, overrides)
    X, y, wl = check_training_data(X, y, wavelengths)
    has_test = X_test is not None and y_test is not None and len(y_test) > 0
    if has_test:
        X_test = np.asarray(X_test, dtype=np.float64)
        y_test = np.asarray(y_test, dtype=np.float64)
        if X_test.ndim != 2 or X_test.shape[1] != X.shape[1] or y_test.shape != (X_test.shape[0],):
            raise DataError(
                f"test data: expected X_test (m, {X.shape[1]}) and y_test (m,), "
                f"got {np.shape(X_test)} and {np.shape(y_test)}"
            )
    say = _reporter(progress)
    t0 = time.perf_counter()

    say(f"PLS: MSC + SG 1st derivative, {s.cv_folds}-fold CV over up to {s.pls_max_components} LVs")
    folds = min(s.cv_folds, X.shape[0])
    pls = fit_pls_cv(X, y, pls_steps(s), s.pls_max_components, folds, random_state=s.seed)
    pls_eval = ModelEvaluation(
        name="pls",
        cv_true=y,
        cv_pred=cv_predictions(pls, X, y, folds, s.seed),
        cv_label=f"{folds}-fold CV",
        test_true=y_test if has_test else None,
        test_pred=pls.predict(X_test) if has_test else None,
        extra={"n_components": int(pls.n_components_), "rmsec": float(pls.rmsec_)},
    )
    t_pls = time.perf_counter() - t0
    say(f"PLS: {pls.n_components_} LVs, RMSECV {pls.rmsecv_:.4g} ({t_pls:.1f} s)")

    Z = pls.preprocess(X)
    stats = CalibrationStatistics(n_components=min(int(pls.n_components_), Z.shape[0] - 2)).fit(Z)

    cnn: _CNNResult | None = None
    if model in ("cnn", "both"):
        t1 = time.perf_counter()
        cnn = _fit_cnn(
            X, y, wl, s, X_test if has_test else None, y_test if has_test else None, progress
        )
        cnn.info["train_seconds"] = time.perf_counter() - t1
        say(f"CNN: trained in {cnn.info['train_seconds']:.1f} s")

    evaluations = [pls_eval] + ([cnn.evaluation] if cnn else [])
    metrics = (cnn.evaluation if cnn else pls_eval).metrics()
    manifest_metrics = {k: metrics.get(k) for k in ("rmsecv", "rmsep", "bias", "r2", "n_test")} | {
        "pls_rmsecv": float(pls.rmsecv_),
        "pls_rmsep": pls_eval.metrics()["rmsep"],
    }
    fallback_limit = s.fallback_k * float(pls.rmsecv_)
    summary = {
        "n_calibration": int(X.shape[0]),
        "n_test": int(len(y_test)) if has_test else 0,
        "model": model,
        "served_by": "cnn" if cnn else "pls",
        "fallback_limit": fallback_limit,
        "calibration_statistics": {
            "n_components": int(stats.n_components_),
            "t2_limit_99": float(stats.t2_limit_99_),
            "q_limit_99": float(stats.q_limit_99_),
        },
        "seconds": {"pls": t_pls, "cnn": cnn.info.get("train_seconds") if cnn else None},
        "settings": s.model_dump(mode="json", exclude={"registry"}),
    }
    report = build_report(
        target=target,
        unit=unit,
        evaluations=evaluations,
        summary=summary,
        history=cnn.history if cnn else None,
        activations=cnn.activations if cnn else None,
        reference_spectrum=cnn.reference if cnn else None,
        wavelengths=cnn.wavelengths if cnn else wl,
    )
    contents = BundleContents(
        target=target,
        unit=unit,
        wavelengths=wl,
        data_hash=data_hash(X, y),
        pls=pls,
        statistics=stats,
        statistics_on_pls=True,
        cnn=cnn.predictor if cnn else None,
        cnn_steps=cnn.steps if cnn else [],
        fallback_limit=fallback_limit,
        target_range=(float(y.min()), float(y.max())),
        metrics=_finite(manifest_metrics),
        training={"n_calibration": int(X.shape[0]), "model": model, "seed": s.seed}
        | ({"cnn": cnn.info} if cnn else {}),
        extra_files={f"report/{name}": data for name, data in report.items()},
    )
    path = write_bundle(contents, out_dir, hmac_key=hmac_key)
    say(f"bundle written to {path} ({time.perf_counter() - t0:.1f} s in all)")
    return path


def _fit_cnn(
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    X_test: np.ndarray | None,
    y_test: np.ndarray | None,
    progress: bool,
) -> _CNNResult:
    """Augment, then EMSC, then the CNN (an ensemble over stratified folds by default)."""

    from nirwatch.chemometrics.augmentation import SpectralAugmenter
    from nirwatch.chemometrics.cnn import CNNConfig
    from nirwatch.chemometrics.scatter import ExtendedMultiplicativeScatterCorrection
    from nirwatch.chemometrics.selection import WavelengthRange
    from training.cnn import TrainConfig, fit_cnn
    from training.cnn_ensemble import fit_cnn_ensemble

    given: dict[str, Any] = {
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "learning_rate": s.learning_rate,
        "patience": s.patience,
    }
    train = TrainConfig(
        **{k: v for k, v in given.items() if v is not None},
        seed=s.seed,
        deterministic=s.deterministic,
        device=s.device,
        progress=progress,
    )
    steps: list[Any] = []
    if s.cnn_start_nm is not None or s.cnn_stop_nm is not None:
        # Selected before augmentation and EMSC (training.cnn.split_augmentation_steps).
        steps.append(WavelengthRange(wl, start=s.cnn_start_nm, stop=s.cnn_stop_nm))
    steps.append(ExtendedMultiplicativeScatterCorrection(order=s.emsc_order))
    augmenter = (
        SpectralAugmenter(n_copies=s.augment_copies, random_state=s.seed)
        if s.augment_copies > 0
        else None
    )
    config = CNNConfig()
    if s.cnn_members > 1:
        fitted = fit_cnn_ensemble(
            X, y, config, steps=steps, augmenter=augmenter, train=train, n_members=s.cnn_members
        )
        assert fitted.oof_pred is not None
        cv_true, cv_pred = y, fitted.oof_pred
        cv_label = f"{s.cnn_members}-fold CV (ensemble members)"
    else:
        # One network: a seeded validation split carved from the calibration data.
        rng = np.random.default_rng(s.seed)
        order = rng.permutation(X.shape[0])
        n_val = max(2, int(round(s.validation_fraction * X.shape[0])))
        val, tr = np.sort(order[:n_val]), np.sort(order[n_val:])
        fitted = fit_cnn(
            X[tr], y[tr], X[val], y[val], config, steps=steps, augmenter=augmenter, train=train
        )
        cv_true, cv_pred = y[val], fitted.predict(X[val])
        cv_label = "validation split"
    evaluation = ModelEvaluation(
        name="cnn",
        cv_true=cv_true,
        cv_pred=np.asarray(cv_pred, dtype=float),
        cv_label=cv_label,
        test_true=y_test,
        test_pred=fitted.predict(X_test) if X_test is not None else None,
        extra={"members": len(fitted.predictor.members), "best_epochs": fitted.best_epochs},
    )
    # The paper's figure: first conv layer's response to the mean calibration spectrum.
    activations, reference, wl_in = fitted.first_layer_response(X, wl)
    return _CNNResult(
        predictor=fitted.predictor,
        steps=fitted.steps,
        evaluation=evaluation,
        history=fitted.history,
        activations=activations,
        reference=reference,
        wavelengths=wl_in,
        info={
            "members": len(fitted.predictor.members),
            "best_epochs": list(fitted.best_epochs),
            "augment_copies": s.augment_copies,
            "emsc_order": s.emsc_order,
            "wavelength_range": [s.cnn_start_nm, s.cnn_stop_nm],
            "config": config.to_dict(),
        },
    )


def _settings(settings: TrainingSettings | None, overrides: dict[str, Any]) -> TrainingSettings:
    unknown = set(overrides) - set(TrainingSettings.model_fields)
    if unknown:
        raise TypeError(f"fit_bundle: unknown setting(s) {sorted(unknown)}")
    if settings is None:
        # Validation without reading the environment: main() reads it, not library code.
        return TrainingSettings.model_validate(overrides | {"registry": {}})
    if not overrides:
        return settings
    return TrainingSettings.model_validate(settings.model_dump() | overrides)


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def _reporter(progress: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        log.info(msg)
        if progress:
            print(msg, file=sys.stderr, flush=True)

    return say
