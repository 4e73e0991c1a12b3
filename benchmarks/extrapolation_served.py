"""What a deployed nirwatch bundle does with the shootout's extrapolation challenge.

``benchmarks/shootout.py`` scores the CNN and PLS alone on the challenge (calibrate on the
calibration tablets between the 10th and 90th assay percentile, predict every tablet outside
them). A line does not publish a bare model: it publishes the bundle's served value (CNN, PLS
when they disagree) with its release decision (T²/Q applicability domain, calibrated range).
This fits the bundle exactly as ``nirwatch train`` does (CNN input from 1100 nm, as the
benchmark) on the challenge's calibration tablets and reports, per seed, the error of each
model and of the served value on the challenge tablets, and how many of them are released.
Nothing is chosen here: the bundle's settings are the shipped defaults.

    .venv/bin/python benchmarks/extrapolation_served.py [--seeds 0 1 2] [--png FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nirwatch.io.datasets import load_spectra  # noqa: E402
from nirwatch.models.bundle import load_bundle  # noqa: E402
from training.fit import fit_bundle  # noqa: E402

SIDE_KEYS = (
    "bias_cnn",
    "bias_pls",
    "rmse_cnn",
    "rmse_pls",
    "out_of_model",
    "outside_range",
    "released",
)
DATA = Path(__file__).resolve().parents[2] / "shared/data/shootout2002/instrument1.csv"


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else float("nan")


def challenge(path: Path) -> dict[str, Any]:
    """The challenge split of ``benchmarks/shootout.py``: limits from the calibration tablets."""
    data = load_spectra(path, target="assay")
    assert data.y is not None
    y = data.y
    is_cal = np.isin(np.asarray(data.metadata["SampleType"]), ["Train", "Validate"])
    lo, hi = np.percentile(y[is_cal], [10, 90])
    inside = (y >= lo) & (y <= hi)
    return {
        "X": data.X,
        "y": y,
        "wl": data.wavelengths,
        "fit": is_cal & inside,
        "tails": ~inside,
        "limits": (float(lo), float(hi)),
    }


def run_seed(ch: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    fit, tails = ch["fit"], ch["tails"]
    path = fit_bundle(
        ch["X"][fit],
        ch["y"][fit],
        ch["wl"],
        target="assay",
        unit="mg",
        out_dir=workdir / f"seed{seed}",
        seed=seed,
        cnn_start_nm=1100.0,
        device="cpu",
    )
    p = load_bundle(path).predict(ch["X"][tails])
    y = ch["y"][tails]
    assert p.outside_range is not None
    released = ~p.out_of_model & ~p.outside_range & np.isfinite(p.value)
    low = y < ch["limits"][0]
    sides = {}
    for name, side in (("low", low), ("high", ~low)):
        sides[name] = {
            "n": int(side.sum()),
            "bias_cnn": float(np.mean(p.cnn_value[side] - y[side])),
            "bias_pls": float(np.mean(p.pls_value[side] - y[side])),
            "rmse_cnn": rmse(p.cnn_value[side], y[side]),
            "rmse_pls": rmse(p.pls_value[side], y[side]),
            "out_of_model": int(p.out_of_model[side].sum()),
            "outside_range": int(p.outside_range[side].sum()),
            "released": int(released[side].sum()),
        }
    return {
        "seed": seed,
        "n": int(y.size),
        "rmse_cnn": rmse(p.cnn_value, y),
        "rmse_pls": rmse(p.pls_value, y),
        "rmse_served": rmse(p.value, y),
        "served_by_pls": int((p.model == "pls").sum()),
        "out_of_model": int(p.out_of_model.sum()),
        "outside_range": int(p.outside_range.sum()),
        "released": int(released.sum()),
        "rmse_released": rmse(p.value[released], y[released]),
        "sides": sides,
        "_y": y,
        "_value": p.value,
        "_released": released,
    }


def plot(rows: list[dict[str, Any]], limits: tuple[float, float], png: Path) -> None:
    r = rows[0]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    y, v, rel = r["_y"], r["_value"], r["_released"]
    ax.scatter(y[rel], v[rel], s=14, label=f"released ({rel.sum()})")
    ax.scatter(y[~rel], v[~rel], s=14, marker="x", label=f"held ({(~rel).sum()})")
    for lim in limits:
        ax.axvline(lim, color="grey", lw=0.8, ls=":")
        ax.axhline(lim, color="grey", lw=0.8, ls=":")
    span = [min(y.min(), v.min()) - 2, max(y.max(), v.max()) + 2]
    ax.plot(span, span, color="k", lw=0.8)
    ax.set(
        xlabel="reference assay (mg)",
        ylabel="served prediction (mg)",
        title=f"Extrapolation challenge, served values (seed {r['seed']})",
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--png", type=Path, default=None, help="served-vs-reference plot (1st seed)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ch = challenge(args.data)
    print(f"calibrate on {ch['fit'].sum()} tablets in {ch['limits']}, predict {ch['tails'].sum()}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_seed(ch, seed, Path(tmp)) for seed in args.seeds]
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}), flush=True)
    print("| side | n | " + " | ".join(SIDE_KEYS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in SIDE_KEYS) + " |")
    for side in ("low", "high"):
        cells = [side, str(rows[0]["sides"][side]["n"])]
        for k in SIDE_KEYS:
            v = [r["sides"][side][k] for r in rows]
            sd = f" ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else ""
            cells.append(f"{np.mean(v):.1f}{sd}")
        print("| " + " | ".join(cells) + " |")
    keys = ("rmse_cnn", "rmse_pls", "rmse_served", "rmse_released", "released")
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join("---" for _ in keys) + " |")
    print(
        "| "
        + " | ".join(
            f"{np.mean([r[k] for r in rows]):.2f} ± {np.std([r[k] for r in rows], ddof=1):.2f}"
            if len(rows) > 1
            else f"{rows[0][k]:.2f}"
            for k in keys
        )
        + " |"
    )
    if args.png:
        plot(rows, ch["limits"], args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
