"""The worker's record encoding alone: ``inference.records.encode_batch`` per prediction.

Times turning one micro-batch's :class:`~nirwatch.models.predictor.BatchPrediction` into its
prediction records (the worker's "predict" stage after the model): without the raw spectrum
messages, with them (each 2.7 kB message hashed with SHA-256 into ``spectrum_sha256``, as the
worker does), and with the audit records as well. No model, no broker: fixed arrays of
``--batch`` predictions.

The last output line is one JSON object: ``us_per_record``, ``us_per_record_hashed`` (the
worker without an audit trail) and ``us_per_record_audited`` (best of ``--repeats``).

    .venv/bin/python benchmarks/prediction_records.py [--batch 2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from inference.records import encode_batch
from nirwatch.messages.spectrum import SpectrumHeader
from nirwatch.models.predictor import BatchPrediction


def run(n: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    headers = [
        SpectrumHeader(
            f"{i:032x}",
            f"probe-{i % 12:02d}",
            f"s-{i}",
            1.7e9 + i * 0.001,
            "lin:600:1898:2",
            650,
            "tablet",
            "LOT-1",
        )  # fmt: skip
        for i in range(n)
    ]
    bp = BatchPrediction(
        value=rng.normal(200, 5, n), model=np.array(["cnn"] * n), fallback_reason=[None] * n,
        cnn_value=rng.normal(200, 5, n), pls_value=rng.normal(200, 5, n), t2=rng.random(n),
        q=rng.random(n), t2_limit=1.0, q_limit=1.0, out_of_model=rng.random(n) > 0.9,
        interval_low=rng.normal(190, 1, n), interval_high=rng.normal(210, 1, n),
    )  # fmt: skip
    predictor: Any = SimpleNamespace(version="v1", checksum="c" * 64, target="api", unit="mg")
    raw = [b"x" * 2700] * n
    out: dict[str, Any] = {"batch": n, "repeats": repeats}
    modes = (
        ("us_per_record", None, False),
        ("us_per_record_hashed", raw, False),
        ("us_per_record_audited", raw, True),
    )
    for key, values, audit in modes:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            encode_batch(headers, bp, predictor, time.time(), values, audit=audit)
            best = min(best, time.perf_counter() - t0)
        out[key] = round(best / n * 1e6, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2000, help="predictions per batch")
    p.add_argument("--repeats", type=int, default=7, help="runs; the best is reported")
    args = p.parse_args(argv)
    print(json.dumps(run(args.batch, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
