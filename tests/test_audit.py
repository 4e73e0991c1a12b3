"""Audit trail: append-only (even for direct SQL), idempotent per prediction id, queryable."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
from builders import publication

from nirwatch.apps.cli import build_parser
from nirwatch.apps.cli_audit import parse_since, run
from nirwatch.errors import ConfigError
from nirwatch.messages.prediction import Prediction
from nirwatch.records.audit import (
    COLUMNS,
    NOT_AUDITED,
    AuditError,
    AuditSettings,
    SQLiteAuditTrail,
    audit_records,
    open_audit_trail,
)
from nirwatch.settings import load_settings


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[SQLiteAuditTrail]:
    t = SQLiteAuditTrail(tmp_path / "audit.sqlite3")
    yield t
    t.close()


#: The audit table as every audit database written so far has it (name, SQLite type, NOT
#: NULL), in column order: its columns are derived from Prediction's fields, and a change here
#: would break the databases already written.
TABLE_V1 = [
    ("seq", "INTEGER", 0), ("prediction_id", "TEXT", 1), ("message_id", "TEXT", 1),
    ("sample_id", "TEXT", 1), ("instrument_id", "TEXT", 1), ("timestamp", "REAL", 1),
    ("published_at", "REAL", 1), ("model_version", "TEXT", 1), ("bundle_checksum", "TEXT", 1),
    ("spectrum_sha256", "TEXT", 1), ("target", "TEXT", 1), ("value", "REAL", 0),
    ("model", "TEXT", 1), ("fallback_reason", "TEXT", 0), ("cnn_value", "REAL", 0),
    ("pls_value", "REAL", 0), ("t2", "REAL", 0), ("q", "REAL", 0), ("t2_limit", "REAL", 0),
    ("q_limit", "REAL", 0), ("out_of_model", "INTEGER", 1), ("releasable", "INTEGER", 1),
    ("product", "TEXT", 1), ("batch", "TEXT", 1), ("unit", "TEXT", 1),
    ("recorded_at", "REAL", 1),
]  # fmt: skip


def test_the_audit_columns_are_the_predictions_fields_and_the_table_is_unchanged(
    trail: SQLiteAuditTrail,
) -> None:
    audited = {f.name for f in fields(Prediction)} - set(NOT_AUDITED)
    assert set(COLUMNS) == audited and "spectrum_sha256" in audited
    db = sqlite3.connect(trail.path)
    try:
        got = [(r[1], r[2], r[3]) for r in db.execute("PRAGMA table_info(prediction_audit)")]
    finally:
        db.close()
    assert got == TABLE_V1


def test_records_carry_hash_of_raw_bytes_and_diagnostics() -> None:
    p, raw = publication("s1", model="pls", fallback_reason="cnn_error", out_of_model=True)
    (rec,) = audit_records([p], [raw])
    assert rec.spectrum_sha256 == hashlib.sha256(raw).hexdigest()
    assert (rec.model, rec.fallback_reason, rec.out_of_model) == ("pls", "cnn_error", True)
    assert (rec.t2, rec.q, rec.model_version) == (1.2, 0.03, "3")
    with pytest.raises(AuditError, match="2 predictions, 1 raw"):
        audit_records([p, p], [raw])


def test_the_predictions_own_hash_is_recorded_and_must_be_its_spectrums() -> None:
    p, raw = publication("s1")
    sha = hashlib.sha256(raw).hexdigest()
    (rec,) = audit_records([dataclasses.replace(p, spectrum_sha256=sha)], [raw])
    assert rec.spectrum_sha256 == sha
    _, other = publication("s2")
    with pytest.raises(AuditError, match=f"says spectrum_sha256 {sha}, its raw spectrum's is"):
        audit_records([dataclasses.replace(p, spectrum_sha256=sha)], [other])


def test_append_query_and_idempotent_retry(trail: SQLiteAuditTrail) -> None:
    pubs = [publication(f"s{i % 3}", instrument=f"probe-{i % 2}") for i in range(30)]
    recs = audit_records([p for p, _ in pubs], [r for _, r in pubs])
    assert trail.append_many(recs[:20]) == 20
    # A retried batch that partly landed before: only the new ones are added.
    assert trail.append_many(recs[10:]) == 10
    assert trail.count() == 30
    assert trail.query(limit=None) == recs  # append order, all fields round-trip
    s1 = trail.query(sample_id="s1")
    assert [r.prediction_id for r in s1] == [r.prediction_id for r in recs if r.sample_id == "s1"]
    both = trail.query(sample_id="s1", instrument="probe-0")
    assert both and all(r.sample_id == "s1" and r.instrument_id == "probe-0" for r in both)
    assert len(trail.query(limit=7)) == 7
    assert trail.append_many([]) == 0


def test_since_until_filter_on_published_at(trail: SQLiteAuditTrail) -> None:
    t0 = 1_800_000_000.0
    pubs = [publication("s", published_at=t0 + i) for i in range(10)]
    trail.append_many(audit_records([p for p, _ in pubs], [r for _, r in pubs]))
    assert [r.published_at for r in trail.query(since=t0 + 7)] == [t0 + 7, t0 + 8, t0 + 9]
    assert len(trail.query(since=t0 + 2, until=t0 + 5)) == 3


def test_redelivery_is_kept_and_traceable_by_message_id(trail: SQLiteAuditTrail) -> None:
    p1, raw = publication("s9", message_id="m-dup")
    p2, _ = publication("s9", message_id="m-dup")  # same message, new prediction id
    p3, raw3 = publication("s10")
    trail.append_many(audit_records([p1, p2, p3], [raw, raw, raw3]))
    assert trail.duplicate_message_ids() == {"m-dup": 2}
    again = trail.query(message_id="m-dup")
    assert {r.prediction_id for r in again} == {p1.prediction_id, p2.prediction_id}
    assert len({r.spectrum_sha256 for r in again}) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE prediction_audit SET value = 0",
        "UPDATE prediction_audit SET out_of_model = 0 WHERE sample_id = 's1'",
        "DELETE FROM prediction_audit",
        "DELETE FROM prediction_audit WHERE seq = 1",
    ],
)
def test_direct_sql_cannot_change_history(trail: SQLiteAuditTrail, sql: str) -> None:
    pubs = [publication("s1", out_of_model=True) for _ in range(3)]
    recs = audit_records([p for p, _ in pubs], [r for _, r in pubs])
    trail.append_many(recs)
    other = sqlite3.connect(trail.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute(sql)
            other.commit()
    finally:
        other.close()
    assert trail.query(limit=None) == recs


@pytest.mark.parametrize("verb", ["INSERT OR REPLACE", "REPLACE"])
def test_replace_cannot_rewrite_history(trail: SQLiteAuditTrail, verb: str) -> None:
    # REPLACE deletes the colliding row without firing DELETE triggers: it must be a no-op.
    pubs = [publication("s1") for _ in range(3)]
    recs = audit_records([p for p, _ in pubs], [r for _, r in pubs])
    trail.append_many(recs)
    cols = ["seq", *COLUMNS, "recorded_at"]
    same_ids = ", ".join({"value": "-1.0"}.get(c, c) for c in cols)
    new_ids = ", ".join(
        {"value": "-1.0", "prediction_id": "prediction_id || 'x'"}.get(c, c) for c in cols
    )
    other = sqlite3.connect(trail.path)
    try:
        for sel in (same_ids, new_ids):  # collide on prediction_id, then on seq alone
            other.execute(
                f"{verb} INTO prediction_audit ({', '.join(cols)}) SELECT {sel} FROM prediction_audit"
            )
        other.commit()
    finally:
        other.close()
    assert trail.query(limit=None) == recs


def test_failed_batch_leaves_nothing(trail: SQLiteAuditTrail) -> None:
    pubs = [publication("s1") for _ in range(5)]
    recs = audit_records([p for p, _ in pubs], [r for _, r in pubs])
    bad = recs[:4] + [recs[4]._replace(sample_id=None)]  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="NOT NULL"):
        trail.append_many(bad)
    assert trail.count() == 0  # one transaction: all or nothing


def test_append_from_other_threads_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a" / "audit.sqlite3"
    trail = SQLiteAuditTrail(path)
    batches = [[publication(f"s{t}") for _ in range(50)] for t in range(4)]

    def work(batch: list[tuple[Prediction, bytes]]) -> None:
        for i in range(0, 50, 10):
            part = batch[i : i + 10]
            trail.append_many(audit_records([p for p, _ in part], [r for _, r in part]))

    threads = [threading.Thread(target=work, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trail.close()
    with open_audit_trail(AuditSettings(path=path)) as again:
        assert again.count() == 200
        assert again.duplicate_message_ids() == {}


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NIRWATCH_AUDIT_PATH", str(tmp_path / "x.db"))
    monkeypatch.setenv("NIRWATCH_AUDIT_BACKEND", "postgres")
    s = load_settings(AuditSettings)
    assert s.path == tmp_path / "x.db" and s.backend == "postgres"
    with pytest.raises(ConfigError, match="NIRWATCH_AUDIT_DSN"):
        open_audit_trail(s)
    monkeypatch.setenv("NIRWATCH_AUDIT_BACKEND", "mysql")
    with pytest.raises(ConfigError, match="NIRWATCH_AUDIT_BACKEND"):
        load_settings(AuditSettings)


def test_parse_since() -> None:
    now = 1_800_000_000.0
    assert parse_since("-1h", now) == now - 3600
    assert parse_since("-30m", now) == now - 1800
    assert parse_since("-2d", now) == now - 2 * 86400
    assert parse_since("1h", now) == now - 3600
    assert parse_since("2027-01-15T08:00:00Z") == 1_800_000_000.0
    assert parse_since("2027-01-15T08:00:00") == parse_since("2027-01-15T08:00:00+00:00")
    assert parse_since("2027-01-15T09:00:00+01:00") == parse_since("2027-01-15T08:00:00Z")
    for bad in ("yesterday", "-1x", "h", ""):
        with pytest.raises(ConfigError, match="--since"):
            parse_since(bad, now)


def _cli(argv: list[str]) -> tuple[int, str]:
    args = build_parser("audit").parse_args(["audit", *argv])
    out = io.StringIO()
    return run(args, out), out.getvalue()


def test_cli_queries_by_sample_since_and_json(trail: SQLiteAuditTrail) -> None:
    now = time.time()
    old = [publication("lot-A", published_at=now - 7200) for _ in range(2)]
    new = [publication("lot-A", published_at=now - 60), publication("lot-B", out_of_model=True)]
    pubs = old + new
    trail.append_many(audit_records([p for p, _ in pubs], [r for _, r in pubs]))

    rc, text = _cli(["--db", str(trail.path), "--sample", "lot-A", "--json"])
    rows = [json.loads(line) for line in text.splitlines()]
    assert rc == 0 and [r["prediction_id"] for r in rows] == [p.prediction_id for p, _ in pubs[:3]]
    assert rows[0]["spectrum_sha256"] == hashlib.sha256(old[0][1]).hexdigest()

    rc, text = _cli(["--db", str(trail.path), "--sample", "lot-A", "--since=-1h", "--json"])
    assert [json.loads(line)["prediction_id"] for line in text.splitlines()] == [
        new[0][0].prediction_id
    ]

    rc, text = _cli(["--db", str(trail.path), "--since", "1h"])
    assert rc == 0 and text.splitlines()[-1] == "2 record(s)"
    assert "out_of_model" in text and new[1][0].message_id in text


def test_cli_missing_db_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no audit trail"):
        _cli(["--db", str(tmp_path / "nope.sqlite3")])
    assert not (tmp_path / "nope.sqlite3").exists()
