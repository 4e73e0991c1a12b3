"""``nirwatch simulate``: inline NIR probes on a tablet line, published to Kafka."""

from __future__ import annotations

import argparse

from ingest.cli_common import add_batch_option, ingest_settings
from ingest.producer import SpectrumProducer
from ingest.streaming import stream_simulator
from nirwatch.signals import stop_on_signals
from nirwatch.simulation.simulator import DRIFT_KINDS, Drift, ProbeSpec, TabletLineSimulator


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", type=int, default=3, help="number of probes (default 3)")
    p.add_argument("--rate", type=float, default=2.0, help="spectra/s per probe (default 2)")
    p.add_argument("--prefix", default="probe", help="instrument ids are PREFIX-1, PREFIX-2...")
    p.add_argument("--drift", choices=DRIFT_KINDS, help="switch on a drift of this kind")
    p.add_argument("--drift-at", type=float, default=60.0, help="drift onset, seconds (60)")
    p.add_argument("--drift-magnitude", type=float, default=1.0, help="drift size (1)")
    p.add_argument("--drift-ramp", type=float, default=60.0, help="seconds to full size (60)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--lab-results", action="store_true", help="publish lab reference values too")
    p.add_argument("--lab-every", type=int, default=10, help="every Nth sample goes to the lab")
    p.add_argument("--lab-delay", type=float, default=0.0, help="lab turnaround, seconds")
    add_batch_option(p)
    p.add_argument("--seed", type=int, help="random seed (default NIRWATCH_INGEST_SEED)")


def build_simulator(args: argparse.Namespace, seed: int) -> TabletLineSimulator:
    """The simulator the options describe."""
    probes = [ProbeSpec(f"{args.prefix}-{i + 1}", args.rate) for i in range(args.probes)]
    drift = None
    if args.drift:
        drift = Drift(
            args.drift,
            onset_s=args.drift_at,
            magnitude=args.drift_magnitude,
            ramp_s=args.drift_ramp,
        )
    return TabletLineSimulator(probes, drift=drift, seed=seed)


def run(args: argparse.Namespace) -> int:
    with stop_on_signals() as stop:
        settings = ingest_settings("simulate", args)
        sim = build_simulator(args, args.seed if args.seed is not None else settings.seed)
        drift = f", drift {args.drift} at {args.drift_at:g} s" if args.drift else ""
        print(
            f"simulating {args.probes} probe(s) at {args.rate:g} spectra/s each{drift} "
            f"-> {settings.kafka.topic_spectra} on {settings.kafka.bootstrap}"
        )
        with SpectrumProducer(settings, source="simulator", expected_grid=sim.grid) as producer:
            stats = stream_simulator(
                sim,
                producer,
                stop=stop,
                duration_s=args.duration,
                max_lag_s=settings.max_lag_s,
                product=settings.product,
                batch=settings.batch,
                lab_every=args.lab_every if args.lab_results else 0,
                lab_delay_s=args.lab_delay,
            )
        print(
            f"sent {stats.sent} spectra in {stats.elapsed_s:.1f} s ({stats.rate:.1f}/s), "
            f"{stats.dead_lettered} dead-lettered, {stats.lab_results} lab results, "
            f"{producer.failed} failed sends"
        )
    return 0
