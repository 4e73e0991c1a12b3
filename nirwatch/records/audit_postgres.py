"""PostgreSQL backend of the audit trail (:mod:`nirwatch.records.audit`), via ``psycopg`` 3.

Imported only when ``NIRWATCH_AUDIT_BACKEND=postgres``: the same table and columns as the
SQLite backend, with triggers that refuse ``UPDATE``, ``DELETE`` and ``TRUNCATE``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from nirwatch.errors import ConfigError
from nirwatch.records.audit import (
    COLUMNS,
    TABLE,
    AuditError,
    AuditTrail,
    _column_type,
)

__all__ = ["PostgresAuditTrail"]


class PostgresAuditTrail(AuditTrail):
    """PostgreSQL backend via ``psycopg`` 3 (``pip install 'psycopg[binary]'``)."""

    _placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(
                "NIRWATCH_AUDIT_BACKEND=postgres needs psycopg: pip install 'psycopg[binary]'"
            ) from exc
        self._psycopg = psycopg
        try:
            self._db = psycopg.connect(dsn, autocommit=True)
            self._create()
        except psycopg.Error as exc:
            raise AuditError(f"cannot open PostgreSQL audit trail: {exc}") from exc
        self._lock = threading.Lock()
        cols = ", ".join(COLUMNS)
        marks = ", ".join(["%s"] * len(COLUMNS))
        self._insert = (
            f"INSERT INTO {TABLE} ({cols}, recorded_at) VALUES ({marks}, %s) "
            "ON CONFLICT (prediction_id) DO NOTHING"
        )

    def _create(self) -> None:
        cols = ",\n  ".join(
            f"{c} {_column_type(c, 'DOUBLE PRECISION', 'BOOLEAN')}" for c in COLUMNS
        )
        with self._db.transaction(), self._db.cursor() as cur:
            # Serialise concurrent first starts of several workers.
            cur.execute("SELECT pg_advisory_xact_lock(727274)")
            cur.execute(
                f"""
                CREATE TABLE IF NOT EXISTS {TABLE} (
                  seq BIGSERIAL PRIMARY KEY,
                  {cols},
                  recorded_at DOUBLE PRECISION NOT NULL,
                  UNIQUE(prediction_id)
                );
                CREATE INDEX IF NOT EXISTS {TABLE}_sample ON {TABLE}(sample_id);
                CREATE INDEX IF NOT EXISTS {TABLE}_message ON {TABLE}(message_id);
                CREATE INDEX IF NOT EXISTS {TABLE}_published ON {TABLE}(published_at);
                CREATE OR REPLACE FUNCTION {TABLE}_refuse() RETURNS trigger AS $$
                BEGIN
                  RAISE EXCEPTION 'audit trail is append-only: % refused', TG_OP;
                END $$ LANGUAGE plpgsql;
                DROP TRIGGER IF EXISTS {TABLE}_no_change ON {TABLE};
                CREATE TRIGGER {TABLE}_no_change BEFORE UPDATE OR DELETE ON {TABLE}
                  FOR EACH ROW EXECUTE FUNCTION {TABLE}_refuse();
                DROP TRIGGER IF EXISTS {TABLE}_no_truncate ON {TABLE};
                CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
                  FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_refuse();
                """
            )

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> int:
        try:
            with self._db.transaction(), self._db.cursor() as cur:
                cur.executemany(self._insert, rows)
                return max(cur.rowcount, 0)
        except self._psycopg.Error as exc:
            raise AuditError(f"audit append of {len(rows)} records failed: {exc}") from exc

    def _select(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                with self._db.transaction(), self._db.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall()
            except self._psycopg.Error as exc:
                raise AuditError(f"audit query failed: {exc}") from exc
