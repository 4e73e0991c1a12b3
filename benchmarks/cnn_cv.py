"""CV-only tuning harness for the shootout CNN (calibration tablets only, never Test).

Usage::

    .venv/bin/python benchmarks/cnn_cv.py --seeds 0 1 --set mixup=0.4 --set epochs=60

``--set key=value`` overrides a :class:`TrainConfig` or :class:`CNNConfig` field of the
defaults. Prints, as JSON, the 5-member ensemble's held-out RMSECV on the 195 calibration
tablets (augmentation + EMSC, as in ``benchmarks/shootout.py``) per seed, and with
``--nested`` the nested extrapolation RMSE: inside the 155 calibration tablets between the
10th and 90th assay percentile, calibrate on those between *their* 10th and 90th percentiles
and predict the rest, so that none of the extrapolation challenge's test tablets is used.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.cnn import CNNConfig
from nirwatch.chemometrics.scatter import ExtendedMultiplicativeScatterCorrection
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.io.datasets import load_spectra
from training.cnn import TrainConfig
from training.cnn_ensemble import fit_cnn_ensemble

DATA = Path(__file__).resolve().parents[2] / "shared/data/shootout2002/instrument1.csv"


def _parse(value: str) -> Any:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return value
    return tuple(parsed) if isinstance(parsed, list) else parsed


def configs(overrides: list[str]) -> tuple[CNNConfig, TrainConfig]:
    """The defaults with ``key=value`` overrides applied."""
    cnn, train = CNNConfig(), TrainConfig()
    cnn_keys = {f.name for f in fields(CNNConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    for item in overrides:
        key, _, value = item.partition("=")
        if key in cnn_keys:
            cnn = replace(cnn, **{key: _parse(value)})
        elif key in train_keys:
            train = replace(train, **{key: _parse(value)})
        else:
            raise SystemExit(f"unknown setting {key!r}")
    return cnn, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--nested", action="store_true", help="also the nested extrapolation check")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--emsc-order", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cnn, train = configs(args.overrides)
    cal = load_spectra(
        args.data, target="assay", split_column="SampleType", split_values={"Train", "Validate"}
    )
    X, y, wl = cal.X, cal.y, cal.wavelengths
    assert y is not None

    def fit(Xc: np.ndarray, yc: np.ndarray, seed: int) -> Any:
        steps = [
            WavelengthRange(wl, start=1100.0),
            ExtendedMultiplicativeScatterCorrection(order=args.emsc_order),
        ]
        aug = SpectralAugmenter(n_copies=10, random_state=seed)
        return fit_cnn_ensemble(
            Xc, yc, cnn, steps=steps, augmenter=aug, train=replace(train, seed=seed), n_members=5
        )

    result: dict[str, Any] = {"set": args.overrides, "emsc_order": args.emsc_order}
    cv, nested, oofs = [], [], []
    t0 = time.perf_counter()
    for seed in args.seeds:
        f = fit(X, y, seed)
        assert f.oof_pred is not None
        oofs.append(f.oof_pred)
        cv.append(float(np.sqrt(np.mean((f.oof_pred - y) ** 2))))
        if args.nested:
            p10, p90 = np.percentile(y, [10, 90])
            inner = (y >= p10) & (y <= p90)
            Xi, yi = X[inner], y[inner]
            q10, q90 = np.percentile(yi, [10, 90])
            core = (yi >= q10) & (yi <= q90)
            g = fit(Xi[core], yi[core], seed)
            pred = g.predict(Xi[~core])
            nested.append(float(np.sqrt(np.mean((pred - yi[~core]) ** 2))))
    result["rmsecv"] = [round(v, 3) for v in cv]
    result["rmsecv_mean"] = round(float(np.mean(cv)), 3)
    if len(oofs) > 1:
        pooled = np.mean(oofs, axis=0)
        result["rmsecv_pooled"] = round(float(np.sqrt(np.mean((pooled - y) ** 2))), 3)
    if nested:
        result["nested_ext"] = [round(v, 3) for v in nested]
        result["nested_ext_mean"] = round(float(np.mean(nested)), 3)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
