"""The PostgreSQL audit backend against a real server started by the test (skipped without one).

Needs ``psycopg`` and Debian's ``postgresql`` package (``initdb``/``pg_ctl``); as root the
server runs as the ``postgres`` user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import publication

from nirwatch.records.audit import (
    AuditRecord,
    AuditSettings,
    audit_records,
    open_audit_trail,
)
from nirwatch.records.audit_postgres import PostgresAuditTrail
from nirwatch.transport.broker import free_port

psycopg = pytest.importorskip("psycopg")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="nirwatch-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    data, port = base / "data", free_port()
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "nirwatch", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL: {exc}")
    try:
        yield f"host=127.0.0.1 port={port} user=nirwatch dbname=postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def _records(n: int, sample: str = "s1", message_id: str | None = None) -> list[AuditRecord]:
    pubs = [
        publication(sample, message_id=message_id) if message_id else publication(sample)
        for _ in range(n)
    ]
    return audit_records([p for p, _ in pubs], [r for _, r in pubs])


def test_postgres_append_query_and_append_only(postgres_dsn: str) -> None:
    from pydantic import SecretStr

    settings = AuditSettings(backend="postgres", dsn=SecretStr(postgres_dsn))
    with open_audit_trail(settings) as trail:
        assert isinstance(trail, PostgresAuditTrail)
        recs = _records(20) + _records(2, sample="s2", message_id="m-dup")
        assert trail.append_many(recs[:15]) == 15
        assert trail.append_many(recs[10:]) == 7  # retried overlap is skipped
        assert trail.query(limit=None) == recs
        assert [r.prediction_id for r in trail.query(sample_id="s2")] == [
            r.prediction_id for r in recs[20:]
        ]
        assert trail.duplicate_message_ids() == {"m-dup": 2}
        assert len(trail.query(since=time.time() - 3600, limit=5)) == 5

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for sql in (
            "UPDATE prediction_audit SET value = 0",
            "DELETE FROM prediction_audit",
            "TRUNCATE prediction_audit",
        ):
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(sql)
        n = conn.execute("SELECT COUNT(*) FROM prediction_audit").fetchone()
        assert n is not None and n[0] == 22

    # Reopening (a second worker starting) keeps the table and its rows.
    with PostgresAuditTrail(postgres_dsn) as again:
        assert again.count() == 22
        again.append_many(_records(1, sample=uuid.uuid4().hex))
        assert again.count() == 23
