"""Batch content uniformity from the audit trail: redeliveries once, releasable units only."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from builders import publication

from nirwatch.apps.cli import build_parser
from nirwatch.apps.cli_audit import run
from nirwatch.errors import ConfigError, DataError
from nirwatch.records.audit import SQLiteAuditTrail, audit_records
from nirwatch.records.batch_summary import format_summary, summarize_batch


def _trail(tmp_path: Path) -> tuple[SQLiteAuditTrail, list[float]]:
    """Batch B1: 40 units around 200 mg, one redelivered with the same value, one out of
    model, one held (outside the calibrated range), one far out (150 mg); batch B2: 3 units."""
    rng = np.random.default_rng(0)
    values = [float(v) for v in rng.normal(201.0, 3.0, 37)] + [150.0]
    pubs = [publication(f"s{i}", batch="B1", value=v) for i, v in enumerate(values)]
    pubs.append(publication("oom", batch="B1", value=260.0, out_of_model=True, releasable=False))
    pubs.append(publication("held", batch="B1", value=245.0, releasable=False))
    # Redelivered after a restart: a new prediction of the same message.
    pubs.append((dataclasses.replace(pubs[3][0], prediction_id=uuid.uuid4().hex), pubs[3][1]))
    pubs += [publication(f"b2-{i}", batch="B2", value=190.0) for i in range(3)]
    trail = SQLiteAuditTrail(tmp_path / "audit.sqlite3")
    trail.append_many(audit_records([p for p, _ in pubs], [r for _, r in pubs]))
    return trail, values


def test_summary_counts_units_once_and_uses_releasable_values(tmp_path: Path) -> None:
    trail, values = _trail(tmp_path)
    records = trail.query(batch="B1", limit=None)
    assert len(records) == 41  # 40 units + 1 redelivery
    s = summarize_batch(records, label_claim=200.0, k=2.0)
    assert s.units == 40 and s.publications == 41 and s.releasable == 38
    assert s.out_of_model == 1 and s.held == 1
    v = np.array(values)
    assert s.mean == pytest.approx(v.mean()) and s.sd == pytest.approx(v.std(ddof=1))
    assert s.mean_pct == pytest.approx(v.mean() / 2.0)
    assert s.outside_85_115 == 1 and s.outside_75_125 == 0  # 150 mg is 75 % LC
    pct = 100 * v / 200.0
    m = min(max(pct.mean(), 98.5), 101.5)
    assert s.reference_value_pct == pytest.approx(m)
    assert s.acceptance_value == pytest.approx(abs(m - pct.mean()) + 2.0 * pct.std(ddof=1))
    assert s.models == {"cnn": 40} and s.batch == "B1"
    text = format_summary(s)
    assert "units: 40 spectra (41 publications, 1 redeliveries counted once)" in text
    assert "acceptance value AV" in text
    assert summarize_batch(records, label_claim=200.0).acceptance_value is None
    trail.close()


def test_summary_refuses_what_it_cannot_summarise(tmp_path: Path) -> None:
    trail, _ = _trail(tmp_path)
    with pytest.raises(DataError, match="no audited predictions"):
        summarize_batch([], label_claim=200.0)
    with pytest.raises(DataError, match=r"more than one batch: \['B1', 'B2'\]"):
        summarize_batch(trail.query(limit=None), label_claim=200.0)
    with pytest.raises(DataError, match="label claim must be a positive number"):
        summarize_batch(trail.query(batch="B2"), label_claim=0.0)
    trail.close()


def _cli(argv: list[str]) -> tuple[int, str]:
    args = build_parser("audit").parse_args(["audit", *argv])
    out = io.StringIO()
    return run(args, out), out.getvalue()


def test_cli_batch_summary(tmp_path: Path) -> None:
    trail, _ = _trail(tmp_path)
    db = str(trail.path)
    rc, text = _cli(["--db", db, "--batch", "B2", "--summary", "--label-claim", "200", "--json"])
    s = json.loads(text)
    assert rc == 0 and s["units"] == 3 and s["mean_pct"] == pytest.approx(95.0)
    rc, text = _cli(["--db", db, "--batch", "B1", "--summary", "--label-claim", "200"])
    assert rc == 0 and "releasable: 38 (95.0 %)" in text
    rc, text = _cli(["--db", db, "--batch", "B2"])
    assert rc == 0 and text.splitlines()[-1] == "3 record(s)"
    with pytest.raises(ConfigError, match="--summary needs --batch and --label-claim"):
        _cli(["--db", db, "--summary", "--batch", "B1"])
    trail.close()
