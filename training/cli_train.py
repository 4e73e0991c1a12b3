"""``nirwatch train``: fit CNN and/or PLS on a dataset and write a model bundle with a report."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from nirwatch.errors import DataError
from nirwatch.io.datasets import load_spectra
from nirwatch.models.registry import ModelRegistry
from nirwatch.renames import add_renamed_option
from nirwatch.settings import load_settings
from training.fit import check_training_data, fit_bundle
from training.settings import TrainingSettings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="spectra, .csv or .npz")
    parser.add_argument("--target", required=True, help="target column (CSV) or key (npz)")
    parser.add_argument("--unit", default="", help="unit of the target, e.g. mg")
    parser.add_argument("--split-column", help="metadata column that says which rows train")
    parser.add_argument(
        "--group-column",
        help="metadata column naming each spectrum's sample: replicate scans of one sample "
        "stay in one cross-validation fold (without it every spectrum is its own sample)",
    )
    parser.add_argument(
        "--train-values",
        help="comma-separated values of --split-column to train on; other rows are the test "
        "set (RMSEP)",
    )
    parser.add_argument(
        "--model",
        choices=["cnn", "pls", "both"],
        default="both",
        help="both: PLS and (with enough spectra) the CNN; the validation winner serves: CNN, "
        "PLS or a blend. cnn: the CNN serves. pls: PLS only. PLS is always the fallback",
    )
    parser.add_argument(
        "--out", type=Path, help="bundle directory to create (default bundles/<target>-<time>)"
    )
    parser.add_argument(
        "--registry", type=Path, help="register the bundle as a candidate in this registry"
    )
    add_renamed_option(parser, "--register", "--registry")
    parser.add_argument("--epochs", type=int, help="CNN epochs (default NIRWATCH_TRAIN_EPOCHS)")
    parser.add_argument("--seed", type=int, help="random seed (default NIRWATCH_TRAIN_SEED)")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where the CNN trains (default NIRWATCH_TRAIN_DEVICE, auto)",
    )


def run(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.exists():  # refuse now, not after minutes of fitting
        raise DataError(f"--out {args.out} already exists: a bundle is written to a new directory")
    overrides = {
        k: v for k, v in (("epochs", args.epochs), ("seed", args.seed), ("device", args.device))
    }
    settings = load_settings(
        TrainingSettings, **{k: v for k, v in overrides.items() if v is not None}
    )
    if (args.split_column is None) != (args.train_values is None):
        raise DataError("--split-column and --train-values go together")
    data = load_spectra(args.data, target=args.target, missing_target="drop")
    assert data.y is not None  # load_spectra checked the target column
    if data.left_out:
        print(f"left out {data.left_out}: no {args.target} value", file=sys.stderr)
    train = np.ones(data.n_samples, dtype=bool)
    if args.split_column is not None:
        values = [v.strip() for v in args.train_values.split(",") if v.strip()]
        if args.split_column not in data.metadata:
            raise DataError(
                f"{args.data}: no split column {args.split_column!r}; "
                f"available: {sorted(data.metadata)}"
            )
        col = data.metadata[args.split_column].astype(str)
        train = np.isin(col, values)
        if not train.any():
            raise DataError(
                f"{args.data}: no rows with {args.split_column} in {values}; "
                f"its values: {sorted(set(col.tolist()))[:20]}"
            )
    test = ~train
    check_training_data(data.X[train], data.y[train], data.wavelengths)
    groups = None
    if args.group_column is not None:
        if args.group_column not in data.metadata:
            raise DataError(
                f"{args.data}: no group column {args.group_column!r}; "
                f"available: {sorted(data.metadata)}"
            )
        groups = data.metadata[args.group_column][train].astype(str)
    out = args.out or Path("bundles") / f"{args.target}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    print(
        f"training {args.model} on {int(train.sum())} spectra x {data.n_points} points "
        f"({int(test.sum())} test rows) -> {out}",
        file=sys.stderr,
    )
    path = fit_bundle(
        data.X[train],
        data.y[train],
        data.wavelengths,
        target=args.target,
        unit=args.unit,
        model=args.model,
        out_dir=out,
        settings=settings,
        X_test=data.X[test] if test.any() else None,
        y_test=data.y[test] if test.any() else None,
        hmac_key=settings.registry.key(),
        progress=True,
        groups=groups,
    )
    report = json.loads((path / "report" / "report.json").read_text())
    for name, m in report["models"].items():
        rmsep = "-" if m.get("rmsep") is None else f"{m['rmsep']:.4g}"
        print(
            f"{name}: RMSECV {m['rmsecv']:.4g}  RMSEP {rmsep}  bias {m['bias']:.3g}  "
            f"R² {m['r2']:.4f} [{args.unit}]"
        )
    sel = report.get("selection", {})
    coverage = report.get("interval", {}).get("test_coverage")
    cov = "" if coverage is None else f"; test interval coverage {coverage:.1%}"
    print(f"served: {report['served_by']} ({sel.get('reason', '')}){cov}")
    print(f"bundle: {path}")
    if args.registry is not None:
        version = ModelRegistry(args.registry, hmac_key=settings.registry.key()).register(path)
        print(f"registered candidate {version} in {args.registry}")
    return 0
