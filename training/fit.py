"""Fit a complete model bundle: the model that validation chooses, PLS as its fallback,
diagnostics, intervals and a report.

1. **PLS** (always; the fallback): recipe (wavelength range, scatter correction, derivative)
   and latent variables chosen by repeated K-fold CV with a one-standard-error rule
   (:class:`nirwatch.chemometrics.pls_search.PLSCalibrationCV`), and the same search rerun
   inside the outer folds for its honest RMSECV (:mod:`training.candidates`).
2. **CNN** (``model`` "both" with at least ``cnn_min_samples`` spectra, or "cnn"): spectral
   augmentation, then EMSC, then the 1-D CNN (Bjerrum, Glahder & Skov 2017); one network per
   outer fold, so its held-out predictions are out-of-fold on the same split.
3. **Served model**: ``w * CNN + (1 - w) * PLS`` with ``w`` from the out-of-fold predictions
   (0 = PLS, 1 = CNN); its reported RMSECV chooses ``w`` inside the outer folds
   (:func:`training.calibration.choose_blend`). ``model="cnn"`` serves the CNN (w = 1).
4. **Range ends**: the model that predicts the held-out bottom and top 10 % of the target best
   serves near and beyond the calibrated range (such values stay not releasable).
5. **Intervals**: split-conformal quantiles of the out-of-fold residuals, scaled by leverage.
6. Calibration statistics (Hotelling T², Q) on the PLS preprocessing; fallback limit
   ``fallback_k x`` the PLS's honest RMSECV.

Never anything of the test rows: they only give RMSEP.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nirwatch.chemometrics.diagnostics import CalibrationStatistics
from nirwatch.errors import DataError
from nirwatch.models.bundle import BundleContents, data_hash, load_bundle, write_bundle
from training.calibration import (
    BlendChoice,
    conformal_quantile,
    cross_validated_coverage,
    leverage_scale,
    rmse,
)
from training.candidates import (
    CNNCandidate,
    PLSCandidate,
    cnn_fits,
    fit_cnn_candidate,
    fit_pls_candidate,
    range_end_check,
)
from training.cnn_ensemble import stratified_folds
from training.report import build_report, plot_selection
from training.serving import (
    blend_choice,
    evaluations,
    oof_by_model,
    selection_record,
    served_rmsecv,
)
from training.settings import TrainingSettings

log = logging.getLogger(__name__)

ModelChoice = Literal["both", "cnn", "pls"]
#: Fewest calibration spectra accepted: K-fold CV and a CNN validation split need a few each.
MIN_SAMPLES = 20
#: Outer folds of the model comparison when the CNN is a single network (no ensemble folds).
OUTER_FOLDS = 5


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
    if wl.size > 1 and not np.all(np.diff(wl) > 0):
        raise DataError(
            "expected increasing wavelengths (load_spectra turns a decreasing axis round), got "
            f"{wl[0]:g} ... {wl[-1]:g} with {int(np.sum(np.diff(wl) <= 0))} non-increasing steps"
        )
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
    groups: Any = None,
    **overrides: Any,
) -> Path:
    """Fit the candidates, choose the served model by validation and write a bundle.

    Parameters
    ----------
    X : array-like (n, p)
        Calibration spectra.
    y : array-like (n,)
        Reference values of ``target`` in ``unit``.
    wavelengths : array-like (p,)
    model : {"both", "cnn", "pls"}
        "both": PLS and (data permitting) the CNN, the validation winner serves (CNN, PLS or a
        blend). "cnn": the CNN serves. "pls": PLS only. PLS is always stored as the fallback.
    out_dir : path
        Bundle directory to create (must not exist).
    settings : TrainingSettings, optional
        Hyper-parameters; ``overrides`` (e.g. ``epochs=5``) replace individual fields.
    X_test, y_test : array-like, optional
        Rows not used for fitting or choosing: RMSEP, test bias, R² and interval coverage of
        the served bundle in the manifest and report.
    hmac_key : optional
        Sign the manifest.
    progress : bool
        Show progress (stage lines, and the CNN's per-epoch bar) on stderr.
    groups : array-like (n,), optional
        Sample of each spectrum: replicate scans of one sample share a value and are kept in
        one fold of every cross-validation split (outer folds, the PLS search, the CNN
        members, the range-end check), so no spectrum is validated against its own replicate.

    Returns
    -------
    Path of the written bundle.
    """
    if model not in ("both", "cnn", "pls"):
        raise DataError(f"model must be 'both', 'cnn' or 'pls', got {model!r}")
    s = _settings(settings, overrides)
    X, y, wl = check_training_data(X, y, wavelengths)
    groups = check_groups(groups, X.shape[0])
    X_test, y_test = _check_test(X, X_test, y_test)
    if Path(out_dir).exists():
        raise DataError(f"refusing to overwrite existing path {out_dir}")
    say = _reporter(progress)
    t0 = time.perf_counter()
    fit = _fit_models(X, y, wl, s, model, say, progress, groups)
    contents = _contents(fit, X, y, wl, s, model, target, unit)
    if fit.n_samples is not None:
        contents = replace(
            contents, training=dict(contents.training) | {"cv_groups": fit.n_samples}
        )
    test = _served_test(contents, X_test, y_test, hmac_key)
    contents = _with_report(contents, fit, X, y, wl, s, model, X_test, y_test, test)
    path = write_bundle(contents, out_dir, hmac_key=hmac_key)
    say(f"served: {fit.served}; bundle written to {path} ({time.perf_counter() - t0:.1f} s in all)")
    return path


@dataclass(frozen=True)
class _Fit:
    """The fitted candidates and what validation chose."""

    pls: PLSCandidate
    stats: CalibrationStatistics
    cnn: CNNCandidate | None
    blend: BlendChoice | None
    weight: float
    ends: dict[str, Any]
    oof: dict[str, np.ndarray]
    served: str
    quantiles: dict[str, float]
    cv_coverage: float | None
    n_samples: int | None = None  # independent samples, when replicates were grouped


def _fit_models(
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    model: ModelChoice,
    say: Callable[[str], None],
    progress: bool,
    groups: np.ndarray | None = None,
) -> _Fit:
    """Steps 1-5 of the module docstring: PLS, CNN, blend, range ends, interval quantiles."""
    k_outer = s.cnn_members if s.cnn_members > 1 else OUTER_FOLDS
    units = X.shape[0] if groups is None else int(np.unique(groups).size)
    folds = stratified_folds(y, min(k_outer, units), seed=s.seed, groups=groups)
    pls = fit_pls_candidate(X, y, wl, s, folds, say, groups)
    stats = CalibrationStatistics(
        n_components=min(int(pls.search.n_components_), X.shape[0] - 2)
    ).fit(pls.model.preprocess(X))
    cnn = _maybe_cnn(X, y, wl, s, model, folds, pls, say, progress, groups, units)
    blend = blend_choice(model, y, folds, pls, cnn)
    weight = 1.0 if blend is None else blend.weight
    ends = range_end_check(X, y, wl, s, pls, cnn, weight if cnn else 0.0, groups)
    say(f"range ends: {ends['model']} extrapolates best ({_fmt(ends['rmse_at_ends'])})")
    oof = oof_by_model(y, pls, cnn, blend)
    served = "pls" if cnn is None or weight == 0 else ("cnn" if weight == 1 else "blend")
    scale = leverage_scale(stats.t2_q(pls.model.preprocess(X))[0], X.shape[0])
    quantiles = {
        name: conformal_quantile(y - pred, scale, s.interval_level) for name, pred in oof.items()
    }
    coverage = cross_validated_coverage(y - oof[served], scale, folds, s.interval_level)
    if coverage is not None:
        say(f"intervals: {coverage:.1%} of held-out calibration spectra covered in CV")
    return _Fit(
        pls, stats, cnn, blend, weight, ends, oof, served, quantiles, coverage,
        None if groups is None else units,
    )  # fmt: skip


def _contents(
    fit: _Fit,
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    model: ModelChoice,
    target: str,
    unit: str,
) -> BundleContents:
    """The bundle to serve: the served model, PLS as fallback, statistics, limits, intervals."""
    pls, cnn, served = fit.pls, fit.cnn, fit.served
    serves_cnn = cnn is not None and served != "pls"
    selection = selection_record(
        y, pls, cnn, fit.blend, fit.oof, served, model, s, n_samples=fit.n_samples
    )
    return BundleContents(
        target=target,
        unit=unit,
        wavelengths=wl,
        data_hash=data_hash(X, y),
        pls=pls.model,
        statistics=fit.stats,
        statistics_on_pls=True,
        cnn=cnn.predictor if cnn is not None and serves_cnn else None,
        cnn_steps=cnn.steps if cnn is not None and serves_cnn else [],
        fallback_limit=s.fallback_k * rmse(pls.nested_oof, y),
        target_range=(float(y.min()), float(y.max())),
        metrics={},
        training={"n_calibration": int(X.shape[0]), "model": model, "seed": s.seed}
        | ({"cnn": cnn.info} if cnn else {}),
        serving={"model": served, "cnn_weight": fit.weight if served != "pls" else 0.0},
        interval={
            "method": "conformal",
            "level": s.interval_level,
            "scale": "leverage",
            "quantile": fit.quantiles[served],
            "quantiles": {k: v for k, v in fit.quantiles.items() if np.isfinite(v)},
        },
        max_interval_width=s.max_interval_width,
        extrapolation={
            "model": fit.ends["model"] if served != "pls" else "pls",
            "margin": s.extrapolation_margin * served_rmsecv(fit.oof, served, y),
        },
        selection=selection | {"range_ends": fit.ends},
    )


def _with_report(
    contents: BundleContents,
    fit: _Fit,
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    model: ModelChoice,
    X_test: Any,
    y_test: Any,
    test: dict[str, Any],
) -> BundleContents:
    """The bundle with its manifest metrics and its report (JSON and figures) added."""
    pls, cnn, stats = fit.pls, fit.cnn, fit.stats
    evals = evaluations(y, pls, cnn, fit.oof, fit.served, X_test, y_test, test)
    metrics = evals[-1].metrics()
    manifest_metrics = {k: metrics.get(k) for k in ("rmsecv", "rmsep", "bias", "r2", "n_test")}
    manifest_metrics |= {
        "pls_rmsecv": rmse(pls.nested_oof, y),
        "pls_rmsep": evals[0].metrics()["rmsep"],
        "interval_coverage": test.get("coverage"),
    }
    summary = {
        "n_calibration": int(X.shape[0]),
        "n_test": int(len(y_test)) if y_test is not None else 0,
        "model": model,
        "served_by": fit.served,
        "selection": contents.selection,
        "interval": dict(contents.interval or {})
        | {"cv_coverage": fit.cv_coverage, "test_coverage": test.get("coverage")},
        "fallback_limit": contents.fallback_limit,
        "calibration_statistics": {
            "n_components": int(stats.n_components_),
            "t2_limit_99": float(stats.t2_limit_99_),
            "q_limit_99": float(stats.q_limit_99_),
        },
        "seconds": {"pls": pls.seconds, "cnn": cnn.info.get("train_seconds") if cnn else None},
        "settings": s.model_dump(mode="json", exclude={"registry"}),
    }
    report = build_report(
        target=contents.target,
        unit=contents.unit,
        evaluations=evals,
        summary=summary,
        history=cnn.history if cnn else None,
        figures={"selection.png": plot_selection(pls.search, contents.selection or {})},
        **(_cnn_figure(cnn, X, wl) if cnn else {"wavelengths": wl}),
    )
    return replace(
        contents,
        metrics=_finite(manifest_metrics),
        extra_files={f"report/{name}": data for name, data in report.items()},
    )


def check_groups(groups: Any, n: int) -> np.ndarray | None:
    """Sample labels (n,) as an array, or None; refused when their shape is not (n,) or a
    label is missing."""
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.shape != (n,):
        raise DataError(f"expected one sample label per spectrum, shape ({n},), got {g.shape}")
    missing = [i for i, v in enumerate(g.tolist()) if v is None or str(v).strip() in ("", "nan")]
    if missing:
        raise DataError(f"sample label missing in {len(missing)} rows, rows {missing[:20]}")
    n_samples = np.unique(g).size
    if n_samples < 3:
        raise DataError(f"at least 3 samples needed for cross-validation, got {n_samples}")
    return g


def _check_test(X: np.ndarray, X_test: Any, y_test: Any) -> tuple[Any, Any]:
    if X_test is None or y_test is None or len(y_test) == 0:
        return None, None
    X_test = np.asarray(X_test, dtype=np.float64)
    y_test = np.asarray(y_test, dtype=np.float64)
    if X_test.ndim != 2 or X_test.shape[1] != X.shape[1] or y_test.shape != (X_test.shape[0],):
        raise DataError(
            f"test data: expected X_test (m, {X.shape[1]}) and y_test (m,), "
            f"got {np.shape(X_test)} and {np.shape(y_test)}"
        )
    return X_test, y_test


def _maybe_cnn(
    X: np.ndarray,
    y: np.ndarray,
    wl: np.ndarray,
    s: TrainingSettings,
    model: str,
    folds: np.ndarray,
    pls: PLSCandidate,
    say: Callable[[str], None],
    progress: bool,
    groups: np.ndarray | None = None,
    n_units: int | None = None,
) -> CNNCandidate | None:
    """The CNN candidate, or None where it cannot or should not train (``n_units``: the
    calibration samples, replicates counted once; default the spectra)."""
    if model == "pls":
        return None
    if not cnn_fits(X.shape[1]):
        say(f"CNN: skipped, {X.shape[1]} points per spectrum are too few for its kernels")
        return None
    # Replicate scans add little information: the threshold counts samples when they are named.
    n_units = X.shape[0] if n_units is None else n_units
    if model == "both" and n_units < s.cnn_min_samples:
        what = "calibration spectra" if groups is None else "calibration samples"
        say(
            f"CNN: skipped, {n_units} {what} < cnn_min_samples "
            f"{s.cnn_min_samples} (PLS serves; --model cnn trains one anyway)"
        )
        return None
    t1 = time.perf_counter()
    cnn = fit_cnn_candidate(X, y, wl, s, folds, pls, progress, groups)
    cnn.info["train_seconds"] = time.perf_counter() - t1
    msg = "" if cnn.oof is None else f", out-of-fold RMSECV {rmse(cnn.oof, y):.4g}"
    say(f"CNN: {cnn.info['members']} network(s), {cnn.info['epochs']} epochs{msg} "
        f"({cnn.info['train_seconds']:.1f} s)")  # fmt: skip
    return cnn


def _served_test(
    contents: BundleContents, X_test: Any, y_test: Any, hmac_key: str | bytes | None
) -> dict[str, Any]:
    """Test predictions of exactly what will be served: write, load and predict."""
    if X_test is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="nirwatch-served-") as tmp:
        path = write_bundle(contents, Path(tmp) / "b", hmac_key=hmac_key)
        p = load_bundle(path, hmac_key=hmac_key, device="cpu").predict(X_test)
    inside = (y_test >= p.interval_low) & (y_test <= p.interval_high)
    return {"pred": p.value, "pls": p.pls_value, "coverage": float(np.mean(inside))}


def _cnn_figure(cnn: CNNCandidate, X: np.ndarray, wl: np.ndarray) -> dict[str, Any]:
    # The paper's figure: first conv layer's response to the mean calibration spectrum.
    activations, reference, wl_in = cnn.fitted.first_layer_response(X, wl)
    return {"activations": activations, "reference_spectrum": reference, "wavelengths": wl_in}


def _fmt(errors: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in errors.items())


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
