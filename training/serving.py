"""Which model serves and why: the blend choice, each servable model's held-out predictions,
the selection record (manifest and report) and the evaluations of the report.

Used by :func:`training.fit.fit_bundle`; every figure here is out of fold (nested where the
settings say so), never of the test rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.calibration import BlendChoice, choose_blend, rmse
from training.candidates import CNNCandidate, PLSCandidate, evaluation
from training.report import ModelEvaluation
from training.settings import TrainingSettings

__all__ = ["blend_choice", "evaluations", "oof_by_model", "selection_record", "served_rmsecv"]


def blend_choice(
    model: str,
    y: np.ndarray,
    folds: np.ndarray,
    pls: PLSCandidate,
    cnn: CNNCandidate | None,
) -> BlendChoice | None:
    """The blend choice (None: no comparison possible, the CNN or PLS serves as asked)."""
    if cnn is None or cnn.oof is None:
        return None
    choice = choose_blend(y, cnn.oof, pls.nested_oof, folds)
    if model == "cnn":  # asked for the CNN: it serves, the comparison is still reported
        return BlendChoice(1.0, cnn.oof, [1.0] * len(choice.fold_weights), choice.rmse_by_weight)
    return choice


def oof_by_model(
    y: np.ndarray, pls: PLSCandidate, cnn: CNNCandidate | None, blend: BlendChoice | None
) -> dict[str, np.ndarray]:
    """Honest held-out predictions of every servable model."""
    out = {"pls": pls.nested_oof}
    if cnn is not None:
        out["cnn"] = cnn.oof if cnn.oof is not None else np.full_like(y, np.nan)
    if blend is not None and 0 < blend.weight < 1:
        out["blend"] = blend.nested_pred
    return out


def selection_record(
    y: np.ndarray,
    pls: PLSCandidate,
    cnn: CNNCandidate | None,
    blend: BlendChoice | None,
    oof: dict[str, np.ndarray],
    served: str,
    model: str,
    s: TrainingSettings,
    n_samples: int | None = None,
) -> dict[str, Any]:
    """What was compared, each candidate's honest RMSECV, and why the winner won
    (``n_samples``: independent samples when replicates were grouped, else ``len(y)``)."""
    n_units = len(y) if n_samples is None else n_samples
    unit = "spectra" if n_samples is None else "samples"
    cands: dict[str, Any] = {"pls": {"rmsecv": rmse(pls.nested_oof, y)} | pls.to_dict()}
    if cnn is not None:
        cands["cnn"] = {"rmsecv": rmse(cnn.oof, y) if cnn.oof is not None else None} | cnn.info
    if blend is not None:
        cands["blend"] = {
            "rmsecv": rmse(blend.nested_pred, y),
            "cnn_weight": blend.weight,
            "outer_fold_weights": blend.fold_weights,
            "rmsecv_by_weight": {f"{w:.2f}": e for w, e in blend.rmse_by_weight.items()},
        }
    if model == "pls":
        why = "--model pls: PLS only"
    elif cnn is None:
        why = "no CNN: " + (
            f"{n_units} calibration {unit} < cnn_min_samples {s.cnn_min_samples}"
            if n_units < s.cnn_min_samples
            else "too few points per spectrum for its kernels"
        )
    elif model == "cnn":
        why = "--model cnn: the CNN serves as asked"
    elif blend is None:
        why = "one CNN network (cnn_members=1) gives no out-of-fold predictions to compare"
    else:
        why = (
            f"lowest out-of-fold RMSE at CNN weight {blend.weight:.2f} "
            f"({blend.rmse_by_weight[blend.weight]:.4g}; PLS alone "
            f"{blend.rmse_by_weight[0.0]:.4g}, CNN alone {blend.rmse_by_weight[1.0]:.4g})"
        )
    return {
        "served": served,
        "reason": why,
        "rmsecv": rmse(oof[served], y),
        "rmsecv_kind": "nested: every choice (recipe, components, blend weight) made inside "
        "the outer folds"
        if s.nested_cv
        else "not nested (nested_cv=false): the PLS search's own out-of-fold predictions, "
        "optimistic",
        "outer_folds": int(max(len(blend.fold_weights) if blend else 0, 0)) or None,
        "candidates": cands,
    }


def evaluations(
    y: np.ndarray,
    pls: PLSCandidate,
    cnn: CNNCandidate | None,
    oof: dict[str, np.ndarray],
    served: str,
    X_test: Any,
    y_test: Any,
    test: dict[str, Any],
) -> list[ModelEvaluation]:
    """PLS, CNN (with out-of-fold predictions) and the served model, as the report shows them.

    ``test`` holds the served bundle's own test predictions (``pred``, ``pls``), if any.
    """
    label = f"{int(pls.search.cv_results_['folds'])}-fold nested CV"
    out = [evaluation("pls", y, pls.nested_oof, label, y_test, test.get("pls"), **pls.to_dict())]
    if cnn is not None and cnn.oof is not None:
        cnn_test = cnn.fitted.predict(X_test) if X_test is not None else None
        out.append(evaluation("cnn", y, cnn.oof, "out-of-fold", y_test, cnn_test, **cnn.info))
    out.append(evaluation("served", y, oof[served], f"{served}, nested CV", y_test,
                          test.get("pred"), model=served))  # fmt: skip
    return out


def served_rmsecv(oof: dict[str, np.ndarray], served: str, y: np.ndarray) -> float:
    """The served model's held-out RMSE; PLS's when it has none (one CNN network, no folds)."""
    value = rmse(oof[served], y)
    return value if np.isfinite(value) else rmse(oof["pls"], y)
