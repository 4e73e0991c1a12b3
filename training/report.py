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

from nirwatch.models.bundle import json_ready


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


def plot_learning_curves(history: Sequence[Sequence[Mapping[str, float]]]) -> bytes:
    """Per network: training loss (standardised MSE) and validation RMSE against the epoch.

    ``history``: one list per network of per-epoch records with ``train_loss`` and
    ``val_rmse`` (as :class:`training.cnn.FittedCNN` keeps them).
    """
    fig = Figure(figsize=(9, 3.8))
    loss_ax, val_ax = fig.subplots(1, 2)
    for i, records in enumerate(history):
        epochs = np.arange(1, len(records) + 1)
        loss_ax.plot(epochs, [r.get("train_loss", np.nan) for r in records], lw=1, label=f"net {i}")
        val_ax.plot(epochs, [r.get("val_rmse", np.nan) for r in records], lw=1, label=f"net {i}")
    loss_ax.set_yscale("log")
    loss_ax.set(xlabel="epoch", ylabel="training loss (standardised MSE)")
    val_ax.set(xlabel="epoch", ylabel="validation RMSE (target units)")
    val_ax.legend(fontsize=7)
    return _png(fig)


def plot_kernel_activations(
    activations: np.ndarray, spectrum: np.ndarray, wavelengths: np.ndarray
) -> bytes:
    """First conv layer's output (filters, L') on a reference spectrum (L,), as in the paper.

    A valid convolution of kernel size k shortens the axis by k − 1; each output is drawn at
    the centre of its window.
    """
    act = np.asarray(activations, dtype=float)
    wl = np.asarray(wavelengths, dtype=float)
    fig = Figure(figsize=(7, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    top.plot(wl[: len(spectrum)], np.asarray(spectrum)[: wl.size], "k", lw=1)
    top.set_ylabel("reference spectrum\n(network input)")
    offset = (len(spectrum) - act.shape[1]) // 2
    centres = wl[offset : offset + act.shape[1]]
    for i, a in enumerate(act):
        a = a - np.median(a)  # the filters' response around their baseline level
        scale = np.abs(a).max() or 1.0
        bottom.plot(centres[: a.size], i + 0.45 * a[: centres.size] / scale, lw=0.8)
    bottom.set_ylabel("first conv layer filters\n(normalised activation)")
    bottom.set_xlabel("wavelength [nm]")
    return _png(fig)


def plot_selection(search: Any, selection: Mapping[str, Any]) -> bytes:
    """Why the winner won: the PLS recipes by RMSECV with the averaged ones and the
    one-standard-error band; the served model's nested RMSECV against the alternatives."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    r = search.cv_results_
    score = np.asarray(r["score"], dtype=float)
    order = np.argsort(score)
    order = order[np.isfinite(score[order])]
    names = [a["recipe"] for a in search.averaged_]
    averaged = {r["recipes"].index(n) for n in names}
    lead = r["recipes"].index(names[0])
    band = score[lead] + r["se"][lead, int(r["n_components"][lead]) - 1]
    rank = np.arange(1, order.size + 1)
    left.axhspan(score[lead], band, color="C1", alpha=0.15, label="within 1 SE of the best")
    left.plot(rank, score[order], ".", color="0.5", label="recipe (at its 1-SE LVs)")
    picked = np.array([i in averaged for i in order])
    left.plot(rank[picked], score[order][picked], "o", color="C1",
              label=f"averaged ({len(names)})")  # fmt: skip
    left.set_xscale("log")
    left.set_xlabel("recipe rank")
    left.set_ylabel("RMSECV")
    left.set_title(f"PLS search: {order.size} recipes; lead {names[0]}", fontsize=8)
    left.legend(fontsize=7)
    cands = selection.get("candidates", {})
    searches = cands.get("pls", {}).get("candidate_set", {}).get("nested_rmsecv", {})
    labels = [f"PLS\n{k} set" for k in searches]
    values = [float(v) for v in searches.values()]
    colours = ["0.6"] * len(labels)
    for k in ("pls", "cnn", "blend"):
        if cands.get(k, {}).get("rmsecv") is not None:
            labels.append(k)
            values.append(float(cands[k]["rmsecv"]))
            colours.append("C1" if k == selection.get("served") else "C0")
    right.bar(labels, values, color=colours)
    for i, v in enumerate(values):
        right.annotate(f"{v:.4g}", (i, v), ha="center", va="bottom", fontsize=8)
    right.set_ylabel("nested RMSECV")
    right.set_title(
        f"served: {selection.get('served')} (orange); grey: each PLS candidate set", fontsize=9
    )
    return _png(fig)


def build_report(
    *,
    target: str,
    unit: str,
    evaluations: Sequence[ModelEvaluation],
    summary: Mapping[str, Any],
    history: Sequence[Sequence[Mapping[str, float]]] | None = None,
    activations: np.ndarray | None = None,
    reference_spectrum: np.ndarray | None = None,
    wavelengths: np.ndarray | None = None,
    figures: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """The report's files, ``{"report.json": ..., "<plot>.png": ...}``; ``figures`` adds
    PNGs already drawn."""
    report = {
        "target": {"name": target, "unit": unit},
        **dict(summary),
        "models": {e.name: e.metrics() for e in evaluations},
    }
    files = {
        "report.json": json.dumps(json_ready(report), indent=2, sort_keys=True).encode(),
        "predicted_vs_reference.png": plot_predicted_vs_reference(evaluations, target, unit),
        "residuals.png": plot_residuals(evaluations, target, unit),
    }
    files.update(figures or {})
    if history:
        files["learning_curves.png"] = plot_learning_curves(history)
    if activations is not None and reference_spectrum is not None and wavelengths is not None:
        files["conv1_kernel_activations.png"] = plot_kernel_activations(
            activations, reference_spectrum, wavelengths
        )
    return files
