"""``nirwatch predict``: predict a CSV/npz file offline with a model bundle."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from nirwatch.errors import DataError
from nirwatch.io.datasets import load_spectra
from nirwatch.models.bundle import load_bundle
from nirwatch.models.registry import RegistrySettings
from nirwatch.settings import load_settings

COLUMNS = (
    "row",
    "prediction",
    "model",
    "fallback_reason",
    "cnn_prediction",
    "pls_prediction",
    "t2",
    "q",
    "out_of_model",
    "outside_range",
    "interval_low",
    "interval_high",
)
CHUNK = 4096


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--data", type=Path, required=True, help="spectra, .csv or .npz")
    parser.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    parser.add_argument(
        "--id-column",
        action="append",
        default=[],
        metavar="COL",
        help="copy this metadata column into the output (repeatable)",
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the CNN runs"
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(RegistrySettings)
    bundle = load_bundle(args.bundle, hmac_key=settings.key(), device=args.device)
    data = load_spectra(args.data)
    if data.n_points != bundle.n_points or not np.allclose(
        data.wavelengths, bundle.wavelengths, atol=1e-6
    ):
        raise DataError(
            f"{args.data}: wavelength grid {data.grid_id or 'custom'} ({data.n_points} points) "
            f"differs from the bundle's {bundle.grid} ({bundle.n_points} points)"
        )
    missing = [c for c in args.id_column if c not in data.metadata]
    if missing:
        raise DataError(f"{args.data}: no column(s) {missing}; available: {sorted(data.metadata)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    n = data.n_samples
    n_out = n_oom = n_cnn = n_outside = 0
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*args.id_column, *COLUMNS])
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            p = bundle.predict(data.X[start:stop])
            ids = [data.metadata[c][start:stop] for c in args.id_column]
            outside = p.outside_range
            low = p.interval_low if p.interval_low is not None else np.full(stop - start, np.nan)
            high = p.interval_high if p.interval_high is not None else np.full(stop - start, np.nan)
            for i in range(stop - start):
                w.writerow(
                    [
                        *(col[i] for col in ids),
                        start + i,
                        _num(p.value[i]),
                        p.model[i],
                        p.fallback_reason[i] or "",
                        _num(p.cnn_value[i]),
                        _num(p.pls_value[i]),
                        _num(p.t2[i]),
                        _num(p.q[i]),
                        str(bool(p.out_of_model[i])).lower(),
                        "" if outside is None else str(bool(outside[i])).lower(),
                        _num(low[i]),
                        _num(high[i]),
                    ]
                )
            n_out += stop - start
            n_oom += int(p.out_of_model.sum())
            n_outside += 0 if outside is None else int(outside.sum())
            n_cnn += int((p.model == "cnn").sum())
            if n > CHUNK:
                print(f"predicted {n_out}/{n}", file=sys.stderr)
    tmp.replace(args.out)
    print(
        f"{n_out} predictions of {bundle.target} [{bundle.unit}] by {bundle.version} -> {args.out} "
        f"(cnn {n_cnn}, pls {n_out - n_cnn}, out of model {n_oom}, "
        f"outside the calibrated range {n_outside})"
    )
    return 0


def _num(v: float) -> str:
    return "" if not np.isfinite(v) else f"{float(v):.9g}"
