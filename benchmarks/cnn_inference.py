"""CNN inference speed alone, on CPU or CUDA (issue 4's GPU figure).

Three measurements, each the best of ``--repeats`` timed passes after a warm-up:

``resident``  the networks' forward pass on float32 spectra already on the device (what the
              device itself can do; a CUDA synchronise closes each pass);
``host``      :meth:`CNNPredictor.predict` from a float32 numpy array, as the worker calls it:
              host-to-device copy, forward pass, result copied back;
``bundle``    (with ``--bundle``) :meth:`LoadedBundle.predict`: the whole predict stage of the
              worker (preprocessing on the CPU, PLS, T² / Q, CNN on the device).

Spectra are random (speed does not depend on their values); the networks are the bundle's when
``--bundle`` is given, else randomly initialised with the default :class:`CNNConfig`.
The last output line is one JSON object with the device name and every figure.

    .venv/bin/python benchmarks/cnn_inference.py [--device cuda] [--bundle DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nirwatch.chemometrics.cnn import CNNConfig, CNNPredictor, SpectralCNN, resolve_device


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def best_rate(run: Callable[[], None], n: int, repeats: int, sync: Callable[[], None]) -> float:
    """Spectra per second of the fastest of ``repeats`` passes over ``n`` spectra."""
    run()  # warm-up: allocator, cuDNN algorithm choice, lazy initialisation
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - t0)
    return n / best


def measure(
    nets: list[SpectralCNN],
    chunk: int,
    host: np.ndarray,
    resident: torch.Tensor,
    repeats: int,
    sync: Callable[[], None],
) -> dict[str, Any]:
    """Spectra/s of the forward pass on ``resident`` and of ``predict(host)``, one chunk size."""
    pred = CNNPredictor(nets, device=str(resident.device), chunk_size=chunk)
    n = host.shape[0]

    def forward() -> None:
        with torch.inference_mode():
            for start in range(0, n, chunk):
                x = resident[start : start + chunk]
                total = pred.members[0].predict_units(x)
                for m in pred.members[1:]:
                    total = total + m.predict_units(x)

    return {
        "members": len(nets),
        "chunk": chunk,
        "resident_sps": best_rate(forward, n, repeats, sync),
        "host_sps": best_rate(lambda: pred.predict(host), n, repeats, sync),
    }


def networks(loaded: Any | None, members: int, length: int) -> list[SpectralCNN]:
    """``members`` networks: the bundle's (repeated as needed), else randomly initialised."""
    if loaded is not None:
        if loaded.cnn is None:
            raise SystemExit(f"{loaded.path}: no CNN in this bundle ({loaded.cnn_load_error})")
        nets: list[SpectralCNN] = list(loaded.cnn.members)
        return (nets * members)[:members]
    torch.manual_seed(0)
    config = CNNConfig().with_input_length(length)
    return [SpectralCNN(config).eval() for _ in range(members)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--bundle", type=Path, help="take the networks (and the bundle row) from here")
    p.add_argument("--length", type=int, default=650, help="points per spectrum without a bundle")
    p.add_argument("--members", default="1,5", help="ensemble sizes to measure")
    p.add_argument("--chunks", help="chunk sizes (default by device)")
    p.add_argument("--spectra", type=int, help="spectra per timed pass (default by device)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick algorithms")
    p.add_argument("--quick", action="store_true", help="small passes, one ensemble size")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    name = (
        torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    )
    default_chunks = "4096,16384,65536,262144" if cuda else "256,1024,4096"
    chunks = [int(c) for c in (args.chunks or default_chunks).split(",")]
    n = args.spectra or (1_048_576 if cuda else 16_384)
    members_list = [int(m) for m in args.members.split(",")]
    if args.quick:
        n, members_list, args.repeats = min(n, 65_536 if cuda else 4096), members_list[:1], 2

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    length = args.length
    loaded = None  # the bundle, loaded once: its networks and the whole-predict row
    if args.bundle is not None:
        from nirwatch.bundle import load_bundle

        loaded = load_bundle(args.bundle, device=str(device))
    log(f"device {name}, torch {torch.__version__}, {n} spectra per pass")
    results: list[dict[str, Any]] = []
    for members in members_list:
        nets = networks(loaded, members, length)
        length = nets[0].config.input_length
        host = np.random.default_rng(0).normal(size=(n, length)).astype(np.float32)
        resident = torch.as_tensor(host, device=device)
        for chunk in chunks:
            row = measure(nets, chunk, host, resident, args.repeats, sync)
            log(
                f"members {members} chunk {chunk:>7}: resident {row['resident_sps']:>13,.0f}/s, "
                f"from host {row['host_sps']:>13,.0f}/s"
            )
            results.append(row)
        del resident
        if cuda:
            torch.cuda.empty_cache()

    bundle_row: dict[str, Any] | None = None
    if loaded is not None:
        raw = np.random.default_rng(1).normal(0.5, 0.01, (min(n, 16_384), loaded.n_points))
        batch = raw.astype(np.float32)
        rate = best_rate(lambda: loaded.predict(batch), batch.shape[0], args.repeats, sync)
        bundle_row = {"spectra": batch.shape[0], "sps": rate}
        log(f"whole bundle predict ({batch.shape[0]} spectra per call): {rate:,.0f}/s")

    best = max(results, key=lambda r: r["resident_sps"])
    summary = {
        "device": name,
        "torch": torch.__version__,
        "input_length": length,
        "cudnn_benchmark": bool(args.cudnn_benchmark),
        "best_resident_sps": best["resident_sps"],
        "best_resident": {"members": best["members"], "chunk": best["chunk"]},
        "best_host_sps": max(r["host_sps"] for r in results),
        "bundle_predict_sps": bundle_row["sps"] if bundle_row else None,
        "rows": results,
    }
    line = json.dumps(summary)
    if args.out is not None:
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
