"""``nirwatch replay``: replay a CSV/npz spectra file (or chemotools' fermentation set)."""

from __future__ import annotations

import argparse
import threading

from ingest.cli_common import add_batch_option, ingest_settings
from ingest.producer import SpectrumProducer
from ingest.replay import FERMENTATION, load_dataset, replay_rows
from ingest.streaming import stream_rows
from nirwatch.signals import stop_on_signals


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help=f"FILE.csv, FILE.npz or '{FERMENTATION}' (chemotools)"
    )
    p.add_argument("--rate", type=float, default=10.0, help="spectra/s in all (default 10)")
    p.add_argument("--loop", action="store_true", help="start over at the end, until stopped")
    p.add_argument(
        "--instrument",
        action="append",
        help="instrument id to replay as (repeat: rows dealt round-robin); default the file name",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--lab-target", help="also publish this column as each row's lab result")
    p.add_argument("--lab-unit", default="", help="unit of --lab-target (e.g. mg)")
    add_batch_option(p)


def run(args: argparse.Namespace) -> int:
    with stop_on_signals() as stop:
        settings = ingest_settings("replay", args)
        ds = load_dataset(args.data)
        instruments = args.instrument or [ds.name]
        # The fermentation set is not a tablet: its own product name unless one is given.
        fermentation = args.data == FERMENTATION and args.product is None
        if args.duration is not None:
            timer = threading.Timer(args.duration, stop.set)
            timer.daemon = True
            timer.start()
        print(
            f"replaying {len(ds)} spectra of {ds.name} (grid {ds.grid}) as {', '.join(instruments)}"
            f" at {args.rate:g}/s{' in a loop' if args.loop else ''} -> "
            f"{settings.kafka.topic_spectra} on {settings.kafka.bootstrap}"
        )
        with SpectrumProducer(settings, source=f"replay:{ds.name}") as producer:
            stats = stream_rows(
                replay_rows(ds, instruments, loop=args.loop),
                ds.grid,
                producer,
                rate_hz=args.rate,
                stop=stop,
                max_lag_s=settings.max_lag_s,
                product=FERMENTATION if fermentation else settings.product,
                batch=settings.batch,
                lab_target=args.lab_target,
                lab_unit=args.lab_unit,
            )
        print(
            f"sent {stats.sent} spectra in {stats.elapsed_s:.1f} s ({stats.rate:.1f}/s), "
            f"{stats.dead_lettered} dead-lettered, {stats.lab_results} lab results, "
            f"{producer.failed} failed sends"
        )
    return 0
