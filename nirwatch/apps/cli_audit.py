"""``nirwatch audit``: query the append-only audit trail of published predictions (read only)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from nirwatch.errors import ConfigError
from nirwatch.records.audit import AuditRecord, AuditSettings, AuditTrail, open_audit_trail
from nirwatch.records.batch_summary import format_summary, summarize_batch
from nirwatch.settings import load_settings

_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds from ISO 8601 (naive means UTC) or a duration ago: ``30m``, ``-1h``, ``2d``.

    argparse takes ``--since -1h`` for an option: write ``--since=-1h`` or ``--since 1h``.
    """
    m = _RELATIVE.match(text.strip())
    if m:
        ref = time.time() if now is None else now
        return ref - float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since: expected ISO 8601 (2026-11-25T18:00:00Z) or a duration ago such as 1h, -30m, 2d, got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", type=Path, help="SQLite audit file (default: NIRWATCH_AUDIT_PATH / backend)"
    )
    p.add_argument("--sample", help="only this sample id")
    p.add_argument("--message", help="only this message id (shows redeliveries)")
    p.add_argument("--instrument", help="only this instrument id")
    p.add_argument("--batch", help="only this production batch")
    p.add_argument("--product", help="only this product")
    p.add_argument(
        "--summary",
        action="store_true",
        help="content uniformity of --batch (redeliveries once, releasable units only)",
    )
    p.add_argument(
        "--label-claim", type=float, help="declared content per unit, for --summary (e.g. 200)"
    )
    p.add_argument(
        "--k",
        type=float,
        help="acceptability constant for the acceptance value (pharmacopoeial table for this n)",
    )
    p.add_argument(
        "--since",
        help="published at or after: ISO 8601, or a duration ago (1h, 30m, 2d; also --since=-1h)",
    )
    p.add_argument("--until", help="published before: ISO 8601 or a duration ago")
    p.add_argument(
        "--limit",
        type=int,
        default=1000,
        help="at most this many records, the first in publication order (default 1000; 0: all); "
        "a cut list says so",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--duplicates", action="store_true", help="list message ids published more than once"
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _flags(r: AuditRecord) -> str:
    on = (
        ("out_of_model", r.out_of_model),
        ("hold", not r.releasable and not r.out_of_model),
        (f"fb:{r.fallback_reason}", r.fallback_reason is not None),
    )
    return ",".join(f for f, flag in on if flag) or "-"


#: (header, cell, right-aligned): ids and versions are printed whole, never cut.
_TABLE: tuple[tuple[str, Callable[[AuditRecord], str], bool], ...] = (
    ("published_at", lambda r: _iso(r.published_at), False),
    ("instrument", lambda r: r.instrument_id, False),
    ("sample", lambda r: r.sample_id, False),
    ("batch", lambda r: r.batch or "-", False),
    ("value", lambda r: _fmt(r.value), True),
    ("model", lambda r: r.model, False),
    ("version", lambda r: r.model_version, False),
    ("T2", lambda r: _fmt(r.t2), True),
    ("Q", lambda r: _fmt(r.q), True),
    ("flags", _flags, False),
    ("message_id", lambda r: r.message_id, False),
    ("spectrum_sha256", lambda r: r.spectrum_sha256[:16], False),
)


def print_table(records: list[AuditRecord], out: TextIO) -> None:
    """A table of the fields a reviewer reads first, each column as wide as its widest cell."""
    cells = [[cell(r) for _, cell, _ in _TABLE] for r in records]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, (h, _, _) in enumerate(_TABLE)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, (_, _, right) in zip(values, widths, _TABLE, strict=True)
        ]
        return " ".join(parts).rstrip()

    print(line([h for h, _, _ in _TABLE]), file=out)
    for row in cells:
        print(line(row), file=out)


def _duplicates(trail: AuditTrail, as_json: bool, out: TextIO) -> int:
    dups = trail.duplicate_message_ids()
    for mid, n in sorted(dups.items()):
        print(
            json.dumps({"message_id": mid, "publications": n}) if as_json else f"{mid} {n}",
            file=out,
        )
    if not dups:
        note = f"no duplicates: each of the {trail.count()} record(s) has its own message id"
        # JSON lines stay an empty stream; the note goes where a person reads it.
        print(note, file=sys.stderr if as_json else out)
    return 0


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    overrides = {"backend": "sqlite", "path": args.db} if args.db else {}
    settings = load_settings(AuditSettings, **overrides)
    if settings.backend == "sqlite" and not Path(settings.path).exists():
        raise ConfigError(
            f"no audit trail at {settings.path} (set --db, NIRWATCH_AUDIT_PATH or "
            "NIRWATCH_STATE_DIR; the demo writes var/demo/audit.sqlite3)"
        )
    now = time.time()
    with open_audit_trail(settings) as trail:
        if args.duplicates:
            return _duplicates(trail, args.json, out)
        if args.summary and (args.batch is None or args.label_claim is None):
            raise ConfigError("--summary needs --batch and --label-claim")
        records = trail.query(
            sample_id=args.sample,
            since=parse_since(args.since, now) if args.since else None,
            until=parse_since(args.until, now) if args.until else None,
            instrument=args.instrument,
            message_id=args.message,
            batch=args.batch,
            product=args.product,
            # One more than asked, to tell the reader that the list is cut.
            limit=None if args.summary or not args.limit else args.limit + 1,
        )
    more = not args.summary and bool(args.limit) and len(records) > args.limit
    records = records[: args.limit] if more else records
    if args.summary:
        summary = summarize_batch(records, label_claim=args.label_claim, k=args.k)
        print(json.dumps(summary.as_dict()) if args.json else format_summary(summary), file=out)
        return 0
    cut = (
        f"showing the first {args.limit} matching records in publication order; more match: "
        "narrow with --since/--sample/--batch or pass --limit 0 for all"
    )
    if args.json:
        for r in records:
            print(json.dumps(r._asdict(), separators=(",", ":")), file=out)
        if more:
            print(cut, file=sys.stderr)
    else:
        print_table(records, out)
        print(f"{len(records)} record(s)" + (f"; {cut}" if more else ""), file=out)
    return 0
