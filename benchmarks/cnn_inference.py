"""CNN inference speed alone, on CPU or CUDA (issues 4 and 16).

Measurements, each the best of ``--repeats`` timed passes after a warm-up; the members one by
one and the fused ensemble (:class:`~nirwatch.chemometrics.cnn_fused.FusedEnsemble`, CPU) are
timed in alternation, same chunk and threads, so their ratio holds on a busy machine:

``resident``  the forward pass on float32 spectra already on the device (what the device itself
              can do; a CUDA synchronise closes each pass): ``members`` and ``fused``;
``host``      :meth:`CNNPredictor.predict` from a float32 numpy array, as the worker calls it:
              host-to-device copy, forward pass, result copied back;
``bundle``    (with ``--bundle``) :meth:`LoadedBundle.predict`: the whole predict stage of the
              worker (preprocessing on the CPU, PLS, T² / Q, CNN on the device).

Every row also gives the ensemble's arithmetic rate: the members' multiply-adds per spectrum
(convolution and dense layers, 2 FLOP each) times spectra per second. The networks' rows use
random spectra (speed does not depend on their values); the bundle row uses simulated probe
spectra, since preprocessing rejects noise that resembles no spectrum (MSC divides by the
reference's multiplier, ~0 for noise). The networks are the bundle's when ``--bundle`` is given,
else randomly initialised with the default :class:`CNNConfig`. The last output line is one JSON
object with the device name, the load average and every figure.

    .venv/bin/python benchmarks/cnn_inference.py [--device cuda] [--bundle DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nirwatch.chemometrics.cnn import CNNConfig, CNNPredictor, SpectralCNN, resolve_device


def loadavg() -> str:
    """The 1-minute load average (CPU contention beside the figures)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def best_rates(
    runs: Mapping[str, Callable[[], object]], n: int, repeats: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Spectra per second of the fastest of ``repeats`` passes over ``n`` spectra, per run.

    Two figures per run: ``name`` per second of wall time, and ``name_cpu`` per second of this
    process's CPU time (all its threads): spectra per core-second, which a neighbour's load
    changes far less than the wall time, since time spent descheduled is not counted. The runs
    alternate within each repeat, so the load hits them alike.
    """
    for run in runs.values():
        run()  # warm-up: allocator, cuDNN algorithm choice, lazy initialisation
    sync()
    best = dict.fromkeys(runs, float("inf"))
    best_cpu = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
            best_cpu[name] = min(best_cpu[name], time.process_time() - c0)
    out = {name: n / t for name, t in best.items()}
    out |= {f"{name}_cpu": n / max(t, 1e-9) for name, t in best_cpu.items()}
    return out


def macs_per_spectrum(config: CNNConfig) -> int:
    """Multiply-adds of one network on one spectrum (convolutions, dense layers, skip)."""
    length, in_ch, macs = config.input_length, 1, 0
    for f, k, s in zip(config.conv_filters, config.kernel_sizes, config.strides, strict=True):
        length = (length - k) // s + 1
        macs += f * in_ch * k * length
        in_ch = f
    prev = in_ch * config.conv_output_length()
    flat = prev
    for units in (*config.dense_units, 1):
        macs += prev * units
        prev = units
    return macs + (flat if config.linear_skip else 0)


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

    def forward(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for start in range(0, n, chunk):
                    fn(resident[start : start + chunk])

        return run

    def members(x: torch.Tensor) -> torch.Tensor:
        total = pred.members[0].predict_units(x)
        for m in pred.members[1:]:
            total = total + m.predict_units(x)
        return total

    runs = {"members": forward(members), "host_members": lambda: pred.predict_members(host)}
    if pred.fused is not None:
        runs |= {"fused": forward(pred.fused), "host_fused": lambda: pred.predict(host)}
    rates = best_rates(runs, n, repeats, sync)
    flop = 2 * len(nets) * macs_per_spectrum(nets[0].config)
    row: dict[str, Any] = {"members": len(nets), "chunk": chunk, "flop_per_spectrum": flop}
    for name, rate in rates.items():
        row[f"{name}_sps"] = rate
    best = max(rates.get("fused", 0.0), rates["members"])
    row["resident_sps"] = best
    row["host_sps"] = max(rates.get("host_fused", 0.0), rates["host_members"])
    row["resident_gflops"] = best * flop / 1e9
    best_cpu = max(rates.get("fused_cpu", 0.0), rates["members_cpu"])
    row["resident_gflops_per_core"] = best_cpu * flop / 1e9
    return row


def describe(row: dict[str, Any]) -> str:
    """One log line: wall-time and CPU-time rates, members one by one and fused."""
    text = (
        f"one by one {row['members_sps']:>9,.0f}/s ({row['members_cpu_sps']:,.0f} per core-second)"
    )
    if "fused_sps" in row:
        text += (
            f", fused {row['fused_sps']:>9,.0f}/s ({row['fused_cpu_sps']:,.0f} per core-second,"
            f" x{row['fused_cpu_sps'] / row['members_cpu_sps']:.2f})"
        )
    return text + (
        f", from host {row['host_sps']:,.0f}/s; {row['resident_gflops_per_core']:.1f} GFLOP "
        "per core-second"
    )


def probe_spectra(n: int, n_points: int) -> np.ndarray:
    """``n`` simulated probe spectra (float32) for the bundle row; their grid must fit."""
    from nirwatch.simulation.simulator import ProbeSpec, TabletLineSimulator

    sim = TabletLineSimulator([ProbeSpec("probe-00")], seed=1)
    spectra = sim.next_batch("probe-00", n).spectra.astype(np.float32)
    if spectra.shape[1] != n_points:
        raise SystemExit(
            f"the bundle expects {n_points} points per spectrum, the simulated probes give "
            f"{spectra.shape[1]} (lin:600:1898:2): the bundle row needs a simulator bundle"
        )
    return spectra


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
        from nirwatch.models.bundle import load_bundle

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
            row["loadavg"] = loadavg()
            log(f"members {members} chunk {chunk:>6}: {describe(row)} [load {row['loadavg']}]")
            results.append(row)
        del resident
        if cuda:
            torch.cuda.empty_cache()

    bundle_row: dict[str, Any] | None = None
    if loaded is not None:
        batch = probe_spectra(min(n, 16_384), loaded.n_points)
        cnn: Any = loaded.cnn
        fused = getattr(cnn, "fused", None)

        def whole(use_fused: bool) -> Callable[[], object]:
            def run() -> object:
                cnn.fused = fused if use_fused else None
                return loaded.predict(batch)

            return run

        runs = {"bundle": whole(True)}
        if fused is not None:
            runs["bundle_members"] = whole(False)
        rates = best_rates(runs, batch.shape[0], args.repeats, sync)
        cnn.fused = fused
        bundle_row = {"spectra": batch.shape[0], "loadavg": loadavg()}
        bundle_row |= {"sps": rates["bundle"], "cpu_sps": rates["bundle_cpu"]}
        if fused is not None:
            bundle_row["members_sps"] = rates["bundle_members"]
            bundle_row["members_cpu_sps"] = rates["bundle_members_cpu"]
        log(
            f"whole bundle predict ({batch.shape[0]} spectra per call): {rates['bundle']:,.0f}/s "
            f"({rates['bundle_cpu']:,.0f} per core-second)"
            + (
                f"; with the members one by one {rates['bundle_members']:,.0f}/s "
                f"({rates['bundle_members_cpu']:,.0f} per core-second)"
                if fused is not None
                else ""
            )
            + f" [load {bundle_row['loadavg']}]"
        )

    best = max(results, key=lambda r: r["resident_sps"])
    summary = {
        "device": name,
        "torch": torch.__version__,
        "loadavg": loadavg(),
        "input_length": length,
        "cudnn_benchmark": bool(args.cudnn_benchmark),
        "best_resident_sps": best["resident_sps"],
        "best_resident": {"members": best["members"], "chunk": best["chunk"]},
        "best_host_sps": max(r["host_sps"] for r in results),
        "best_members_sps": max(r["members_sps"] for r in results),
        "best_fused_sps": max((r.get("fused_sps", 0.0) for r in results), default=0.0) or None,
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
