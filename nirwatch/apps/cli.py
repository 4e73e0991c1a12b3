"""The ``nirwatch`` command line.

Each sub-command lives in the package that owns it and is imported only when chosen, so
``nirwatch/`` never imports a service at module level. A command module exposes
``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from nirwatch import __version__
from nirwatch.errors import NirwatchError
from nirwatch.logs import configure_logging
from nirwatch.renames import warn_renamed_options

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("nirwatch.apps.cli_broker", "run the embedded Kafka-compatible broker (Tansu)"),
    "simulate": (
        "ingest.cli_simulate",
        "simulate inline NIR probes on a tablet line and publish spectra",
    ),
    "replay": ("ingest.cli_replay", "replay a CSV/npz spectra dataset to Kafka at a chosen rate"),
    "file-drop": (
        "ingest.cli_file_drop",
        "publish spectra files that instrument software drops into a folder",
    ),
    "opcua-ingest": (
        "ingest.cli_opcua",
        "publish the spectra an analyser serves over OPC UA (subscription, reconnects)",
    ),
    "worker": ("inference.cli", "run the inference worker (consume, predict, publish, metrics)"),
    "opcua-server": (
        "inference.opcua.cli",
        "serve predictions as a secure, read-only OPC UA address space (one analyser per instrument)",
    ),
    "train": ("training.cli_train", "fit CNN and/or PLS on a dataset and write a model bundle"),
    "predict": ("nirwatch.apps.cli_predict", "predict a CSV/npz file offline with a model bundle"),
    "models": ("nirwatch.apps.cli_models", "list, promote and roll back models in the registry"),
    "retrain-service": ("training.service", "scheduled and webhook-triggered retraining service"),
    "drift-monitor": (
        "monitoring.cli_drift",
        "drift detectors on the predictions and lab-results topics, as Prometheus gauges",
    ),
    "audit": ("nirwatch.apps.cli_audit", "query the append-only audit trail of predictions"),
    "demo": (
        "nirwatch.apps.cli_demo",
        "run broker, probes, worker and a live table on embedded defaults",
    ),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Top-level parser; only the chosen command's module is imported to configure it."""
    parser = argparse.ArgumentParser(prog="nirwatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nirwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="warnings and errors only (services log INFO)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            _load(module).configure(p)
    return parser


def _load(module: str):  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise SystemExit(f"nirwatch: command module {module} is not available: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(args_list)
    configure_logging(args.command, args.verbose, args.quiet)
    warn_renamed_options(args)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(_load(COMMANDS[args.command][0]).run(args) or 0)
    except NirwatchError as exc:
        print(f"nirwatch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`nirwatch audit | head`): not an error of ours. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
