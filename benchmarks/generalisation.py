"""Do ``nirwatch train``'s defaults hold on other data? Every public set in ../shared/data and
chemotools' fermentation set, through the same code path a user gets.

For every target: ``nirwatch train`` with no flags but the data set's own calibration/test split,
then the bundle predicts the test rows exactly as it would serve them. Baselines on the same
split: a plain PLS (raw spectra, scikit-learn's ``PLSRegression`` with its defaults, 1..20 latent
variables by shuffled 10-fold CV: the ten-line script a user would write) and the bundle's own
CV-selected PLS. Writes docs/results/generalisation.md (table, between the markers), a JSON
file of the figures and a PNG.

Every run evaluates every target's test set once: count the runs in the doc.

    .venv/bin/python benchmarks/generalisation.py [--only shootout] [--epochs N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.cross_decomposition import PLSRegression
from sklearn.model_selection import GridSearchCV, KFold

from nirwatch.apps.cli import main as nirwatch_main
from nirwatch.io.datasets import load_fermentation, load_spectra
from nirwatch.models.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DOC = ROOT / "docs" / "results" / "generalisation.md"
BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"

#: (set, file, targets, calibration values of SampleType)
SETS = [
    ("shootout", DATA / "shootout2002" / "instrument1.csv", ["assay", "weight", "hardness"],
     "Train,Validate"),
    ("dough", DATA / "dough" / "dough.csv", ["fat", "sucrose", "flour", "water"], "Train"),
    ("raman_pufa", DATA / "raman_pufa" / "raman_pufa.csv", ["pufa_sample", "pufa_fat"], "Train"),
]  # fmt: skip


def fermentation_csv(tmp: Path) -> Path:
    """chemotools' fermentation set as one CSV: 21 off-line Train spectra, 34 on-line Test."""
    train, test = load_fermentation("train"), load_fermentation("test")
    path = tmp / "fermentation.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["SampleType", "glucose", *[f"{v:g}" for v in train.wavelengths]])
        for kind, ds in (("Train", train), ("Test", test)):
            assert ds.y is not None
            for x, yv in zip(ds.X, ds.y, strict=True):
                w.writerow([kind, repr(float(yv)), *map(repr, x.tolist())])
    return path


def plain_pls_rmsep(X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray) -> float:
    """The ten-line baseline: PLSRegression defaults, 1..20 LVs by shuffled 10-fold CV."""
    top = min(20, X.shape[0] - X.shape[0] // 10 - 1, X.shape[1])
    search = GridSearchCV(
        PLSRegression(),
        {"n_components": list(range(1, top + 1))},
        cv=KFold(10, shuffle=True, random_state=0),
        scoring="neg_root_mean_squared_error",
    ).fit(X, y)
    return float(np.sqrt(np.mean((search.predict(Xt).ravel() - yt) ** 2)))


def targets(only: str | None, tmp: Path) -> Iterator[tuple[str, Path, str, str]]:
    sets = SETS + [("fermentation", fermentation_csv(tmp), ["glucose"], "Train")]
    for name, path, tnames, cal in sets:
        if only and name != only:
            continue
        for t in tnames:
            yield name, path, t, cal


def run_one(name: str, path: Path, target: str, cal: str, tmp: Path, extra: list[str]) -> dict:
    out = tmp / f"{name}-{target}"
    t0 = time.perf_counter()
    rc = nirwatch_main(
        ["train", "--data", str(path), "--target", target, "--split-column", "SampleType",
         "--train-values", cal, "--out", str(out), *extra]
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"nirwatch train failed on {name}/{target}")
    data = load_spectra(path, target=target)
    assert data.y is not None
    train = np.isin(data.metadata["SampleType"].astype(str), cal.split(","))
    X, y, Xt, yt = data.X[train], data.y[train], data.X[~train], data.y[~train]
    bundle = load_bundle(out, device="cpu")
    p = bundle.predict(Xt)
    report = json.loads((out / "report" / "report.json").read_text())
    assert p.interval_low is not None and p.interval_high is not None
    covered = (yt >= p.interval_low) & (yt <= p.interval_high)
    lo, hi = float(y.min()), float(y.max())
    return {
        "set": name,
        "target": target,
        "n_cal": int(train.sum()),
        "n_test": int((~train).sum()),
        "test_beyond_range": int(((yt < lo) | (yt > hi)).sum()),
        "plain_pls": plain_pls_rmsep(X, y, Xt, yt),
        "tuned_pls": float(np.sqrt(np.mean((p.pls_value - yt) ** 2))),
        "deployed": float(np.sqrt(np.mean((p.value - yt) ** 2))),
        "served": report["served_by"],
        "rmsecv": report["selection"]["rmsecv"],
        "pls_recipe": report["selection"]["candidates"]["pls"]["recipe"]["name"],
        "pls_lvs": report["selection"]["candidates"]["pls"]["n_components"],
        "pls_set": report["selection"]["candidates"]["pls"]["candidate_set"]["chosen"],
        "pls_averaged": len(report["selection"]["candidates"]["pls"].get("averaged", [None])),
        "cv_coverage": report["interval"].get("cv_coverage"),
        "candidates": {k: v.get("rmsecv") for k, v in report["selection"]["candidates"].items()},
        "coverage": float(covered.mean()),
        "coverage_in_range": float(covered[(yt >= lo) & (yt <= hi)].mean())
        if ((yt >= lo) & (yt <= hi)).any()
        else None,
        "mean_width": float(np.mean(p.interval_high - p.interval_low)),
        "seconds": seconds,
    }


def geomean(v: list[float]) -> float:
    return float(np.exp(np.mean(np.log(v))))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| set | target | n cal / test (beyond range) | plain PLS | CV-selected PLS | deployed "
        "| deployed / plain | served | PLS candidate set: lead recipe (LVs) + recipes averaged "
        "| nested RMSECV | 95 % interval coverage: test (in range); CV | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cov_in = "-" if r["coverage_in_range"] is None else f"{r['coverage_in_range']:.0%}"
        recipe = r["pls_recipe"].replace("|", "\\|")  # a recipe name's steps, not a column
        more = r.get("pls_averaged", 1) - 1
        cv_cov = "-" if r.get("cv_coverage") is None else f"{r['cv_coverage']:.0%}"
        lines.append(
            f"| {r['set']} | {r['target']} | {r['n_cal']} / {r['n_test']} "
            f"({r['test_beyond_range']}) | {r['plain_pls']:.4g} | {r['tuned_pls']:.4g} "
            f"| {r['deployed']:.4g} | {r['deployed'] / r['plain_pls']:.2f} | {r['served']} "
            f"| {r['pls_set']}: {recipe} ({r['pls_lvs']})"
            + (f" + {more}" if more else "")
            + f" | {r['rmsecv']:.4g} | {r['coverage']:.0%} ({cov_in}); {cv_cov} "
            f"| {r['seconds']:.0f} |"
        )
    ratios = [r["deployed"] / r["plain_pls"] for r in rows]
    tuned = [r["tuned_pls"] / r["plain_pls"] for r in rows]
    vs_tuned = [r["deployed"] / r["tuned_pls"] for r in rows]
    lines += [
        "",
        f"Geometric mean over {len(rows)} targets: deployed / plain PLS **{geomean(ratios):.3f}** "
        f"(worst {max(ratios):.2f}); CV-selected PLS / plain PLS {geomean(tuned):.3f}; "
        f"deployed / CV-selected PLS {geomean(vs_tuned):.3f}.",
    ]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig = Figure(figsize=(10, 4.2))
    ax = fig.add_subplot()
    names = [f"{r['set'].replace('_', ' ')}\n{r['target']}" for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["tuned_pls"] / r["plain_pls"] for r in rows], 0.4, label="CV-selected PLS")
    ax.bar(x + 0.2, [r["deployed"] / r["plain_pls"] for r in rows], 0.4, label="deployed")
    ax.axhline(1.0, color="k", lw=1)
    ax.axhline(0.75, color="k", lw=1, ls="--", label="target 0.75")
    ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("test RMSE / plain PLS test RMSE")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="one set: shootout, dough, raman_pufa or fermentation")
    ap.add_argument("--epochs", type=int, help="override the CNN's epochs (quick checks only)")
    ap.add_argument("--no-doc", action="store_true", help="print the table, leave the doc alone")
    ap.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the doc's table and plot from generalisation.json (no training, "
        "no test evaluation)",
    )
    args = ap.parse_args()
    if args.render:
        rows = json.loads((DOC.parent / "generalisation.json").read_text())
        head = (
            DOC.read_text().split(BEGIN, 1)[1].strip().split("\n", 1)[0]
        )  # the run's command line
        write_doc(rows, head)
        return
    extra = ["--epochs", str(args.epochs)] if args.epochs else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, target, cal in targets(args.only, Path(tmp)):
            rows.append(run_one(name, path, target, cal, Path(tmp), extra))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.no_doc:
        return
    (DOC.parent / "generalisation.json").write_text(json.dumps(rows, indent=2) + "\n")
    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs"
    head = (
        f"Command: `.venv/bin/python benchmarks/generalisation.py"
        f"{' --only ' + args.only if args.only else ''}`; machine: {machine}; load average at "
        f"the end {Path('/proc/loadavg').read_text().split()[0]}."
    )
    write_doc(rows, head)


def write_doc(rows: list[dict[str, Any]], head: str) -> None:
    """The table and plot between the doc's markers; ``head`` says how the rows were made."""
    plot(rows, DOC.parent / "generalisation.png")
    block = (
        f"{BEGIN}\n{head}\n\n{table(rows)}\n\n"
        f"![test RMSE relative to plain PLS](generalisation.png)\n{END}"
    )
    doc = DOC.read_text() if DOC.exists() else f"# Generalisation\n\n{BEGIN}\n{END}\n"
    pre, rest = doc.split(BEGIN, 1)
    DOC.write_text(pre + block + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
