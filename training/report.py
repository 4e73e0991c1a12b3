"""Training report: metrics (JSON) and plots (PNG), built in memory to go inside the bundle.

Plots follow Bjerrum, Glahder & Skov (2017): predicted vs reference, residuals, learning
curves, and the first convolutional layer's kernels applied to a reference spectrum (what
each filter "sees": peaks, edges, baseline).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, bias (mean of predicted − reference), R² and n of a set of predictions."""
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    resid = p - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "bias": float(resid.mean()),
        "r2": float(1.0 - (resid**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "n": int(y.size),
    }


@dataclass
class ModelEvaluation:
    """One model's predictions for the report.

    ``cv_pred`` are cross-validated (PLS) or held-out validation (CNN) predictions of
    ``cv_true``; ``test_pred`` predictions of the rows not used for training, if any.
    """

    name: str
    cv_true: np.ndarray
    cv_pred: np.ndarray
    cv_label: str = "cross-validation"
    test_true: np.ndarray | None = None
    test_pred: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        cv = regression_metrics(self.cv_true, self.cv_pred)
        out: dict[str, Any] = {
            "rmsecv": cv["rmse"],
            "cv_bias": cv["bias"],
            "cv_r2": cv["r2"],
            "n_cv": cv["n"],
            "cv_kind": self.cv_label,
        }
        if self.test_true is not None and self.test_pred is not None and len(self.test_true):
            t = regression_metrics(self.test_true, self.test_pred)
            out.update(rmsep=t["rmse"], bias=t["bias"], r2=t["r2"], n_test=t["n"])
        else:
            out.update(rmsep=None, bias=cv["bias"], r2=cv["r2"], n_test=0)
        out.update(self.extra)
        return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_predicted_vs_reference(evals: Sequence[ModelEvaluation], target: str, unit: str) -> bytes:
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    lo, hi = np.inf, -np.inf
    for e in evals:
        ax.scatter(e.cv_true, e.cv_pred, s=10, alpha=0.6, label=f"{e.name} {e.cv_label}")
        lo, hi = min(lo, e.cv_true.min()), max(hi, e.cv_true.max())
        if e.test_true is not None and e.test_pred is not None and len(e.test_true):
            ax.scatter(e.test_true, e.test_pred, s=10, marker="x", label=f"{e.name} test")
            lo, hi = min(lo, e.test_true.min()), max(hi, e.test_true.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"reference {target} [{unit}]")
    ax.set_ylabel(f"predicted {target} [{unit}]")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_residuals(evals: Sequence[ModelEvaluation], target: str, unit: str) -> bytes:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for e in evals:
        ax.scatter(
            e.cv_true, e.cv_pred - e.cv_true, s=10, alpha=0.6, label=f"{e.name} {e.cv_label}"
        )
        if e.test_true is not None and e.test_pred is not None and len(e.test_true):
            ax.scatter(
                e.test_true, e.test_pred - e.test_true, s=10, marker="x", label=f"{e.name} test"
            )
    ax.axhline(0, color="k", lw=1)
    ax.set_xlabel(f"reference {target} [{unit}]")
    ax.set_ylabel(f"residual (predicted − reference) [{unit}]")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_learning_curves(history: Mapping[str, Sequence[float]]) -> bytes:
    """``history``: per-epoch series such as ``train_loss`` and ``val_loss``."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, values in history.items():
        v = np.asarray(values, dtype=float)
        if v.ndim == 1 and v.size and np.isfinite(v).any():
            ax.plot(np.arange(1, v.size + 1), v, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _png(fig)


def first_layer_activations(
    kernels: np.ndarray, bias: np.ndarray | None, spectrum: np.ndarray
) -> np.ndarray:
    """Each first-layer kernel cross-correlated with a spectrum ('same' length, as conv1d).

    Parameters
    ----------
    kernels : ndarray (n_filters, 1, k) or (n_filters, k)
    bias : ndarray (n_filters,) or None
    spectrum : ndarray (n_points,)

    Returns
    -------
    ndarray (n_filters, n_points): pre-activation responses.
    """
    w = np.asarray(kernels, dtype=float).reshape(kernels.shape[0], -1)
    x = np.asarray(spectrum, dtype=float).ravel()
    out = np.stack(
        [np.correlate(np.pad(x, (w.shape[1] // 2, (w.shape[1] - 1) // 2)), k) for k in w]
    )
    if bias is not None:
        out += np.asarray(bias, dtype=float).reshape(-1, 1)
    return out


def plot_kernel_activations(
    kernels: np.ndarray, bias: np.ndarray | None, spectrum: np.ndarray, wavelengths: np.ndarray
) -> bytes:
    act = first_layer_activations(kernels, bias, spectrum)
    fig = Figure(figsize=(7, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    wl = np.asarray(wavelengths, dtype=float)[: act.shape[1]]
    top.plot(wl, np.asarray(spectrum)[: wl.size], "k", lw=1)
    top.set_ylabel("reference spectrum\n(preprocessed)")
    for i, a in enumerate(act):
        scale = np.abs(a).max() or 1.0
        bottom.plot(wl, i + 0.45 * a / scale, lw=0.8)
    bottom.set_ylabel("first conv layer filter (normalised activation)")
    bottom.set_xlabel("wavelength [nm]")
    return _png(fig)


def build_report(
    *,
    target: str,
    unit: str,
    evaluations: Sequence[ModelEvaluation],
    summary: Mapping[str, Any],
    history: Mapping[str, Sequence[float]] | None = None,
    kernels: tuple[np.ndarray, np.ndarray | None] | None = None,
    reference_spectrum: np.ndarray | None = None,
    wavelengths: np.ndarray | None = None,
) -> dict[str, bytes]:
    """The report's files, ``{"report.json": ..., "<plot>.png": ...}``."""
    report = {
        "target": {"name": target, "unit": unit},
        **dict(summary),
        "models": {e.name: e.metrics() for e in evaluations},
    }
    files = {
        "report.json": json.dumps(_jsonable(report), indent=2, sort_keys=True).encode(),
        "predicted_vs_reference.png": plot_predicted_vs_reference(evaluations, target, unit),
        "residuals.png": plot_residuals(evaluations, target, unit),
    }
    if history:
        files["learning_curves.png"] = plot_learning_curves(history)
    if kernels is not None and reference_spectrum is not None and wavelengths is not None:
        files["conv1_kernel_activations.png"] = plot_kernel_activations(
            kernels[0], kernels[1], reference_spectrum, wavelengths
        )
    return files


def _jsonable(obj: Any) -> Any:
    """Plain JSON: NaN/inf become null (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
