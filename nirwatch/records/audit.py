"""Append-only audit trail of every published prediction.

A release decision must be traceable to the exact spectrum bytes and model that produced it, so
each publication is recorded with the SHA-256 of the raw Kafka value, the model version and the
bundle checksum. The worker calls :meth:`AuditTrail.append_many` once per micro-batch, after
publishing (one transaction, ``executemany``)::

    trail = open_audit_trail(load_settings(AuditSettings))        # once, in main()
    trail.append_many(audit_records(predictions, raw_values))     # per micro-batch

A redelivered message (at-least-once delivery) gets a new prediction id, so it appears again
under the same ``message_id``: duplicates are kept and traceable, never silently merged.
Appending the same ``prediction_id`` twice is a no-op, so a retried ``append_many`` is safe.

Backends: SQLite (default; WAL journal) and PostgreSQL (``psycopg`` 3, imported only when
chosen). In both, database triggers refuse ``UPDATE`` and ``DELETE`` (and ``TRUNCATE`` on
PostgreSQL) so the table stays append-only even for direct SQL; dropping the table needs the
database owner, which the service account should not be.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from nirwatch.errors import ConfigError, NirwatchError
from nirwatch.messages.prediction import Prediction
from nirwatch.settings import NirwatchSettings, state_dir_field, under_state_dir
from nirwatch.statedirs import writable_dir

TABLE = "prediction_audit"


class AuditError(NirwatchError):
    """The audit trail cannot be opened or written, or a record is inconsistent."""


class AuditSettings(NirwatchSettings):
    """Where the audit trail lives (``NIRWATCH_AUDIT_*``)."""

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_AUDIT_", frozen=True, extra="ignore")

    backend: Literal["sqlite", "postgres"] = "sqlite"
    #: ``NIRWATCH_STATE_DIR`` (default ``var``, git-ignored, relative to the working directory).
    state_dir: Path = state_dir_field()
    #: Default ``<state_dir>/audit.sqlite3``.
    path: Path = Path("var/audit.sqlite3")
    dsn: SecretStr | None = None
    #: FULL fsyncs the WAL at every commit (one per micro-batch): survives power loss.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"

    @model_validator(mode="before")
    @classmethod
    def _default_path(cls, data: Any) -> Any:
        return under_state_dir(data, "path", "audit.sqlite3")


class AuditRecord(NamedTuple):
    """One published prediction as recorded. ``spectrum_sha256`` hashes the raw message value.

    A named tuple rather than a frozen dataclass: the worker builds one per published
    prediction, and a frozen dataclass of 24 fields costs ~7 µs to construct (one
    ``object.__setattr__`` per field), a named tuple ~1 µs; it is also the database row as is.
    """

    prediction_id: str
    message_id: str
    sample_id: str
    instrument_id: str
    timestamp: float
    published_at: float
    model_version: str
    bundle_checksum: str
    spectrum_sha256: str
    target: str
    value: float | None
    model: str
    fallback_reason: str | None
    cnn_value: float | None
    pls_value: float | None
    t2: float | None
    q: float | None
    t2_limit: float | None
    q_limit: float | None
    out_of_model: bool
    releasable: bool
    product: str
    batch: str
    unit: str


COLUMNS: tuple[str, ...] = AuditRecord._fields
_TEXT_NOT_NULL = {
    "prediction_id",
    "message_id",
    "sample_id",
    "instrument_id",
    "model_version",
    "bundle_checksum",
    "spectrum_sha256",
    "target",
    "model",
    "product",
    "batch",
    "unit",
}


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def audit_records(
    predictions: Sequence[Prediction], raw_values: Sequence[bytes]
) -> list[AuditRecord]:
    """Audit records for published predictions and the raw Kafka values they came from.

    Parameters
    ----------
    predictions : sequence of Prediction, length n
    raw_values : sequence of bytes, length n
        The spectrum messages' values exactly as consumed (hashed with SHA-256).
    """
    if len(predictions) != len(raw_values):
        raise AuditError(
            f"expected one raw value per prediction: {len(predictions)} predictions, "
            f"{len(raw_values)} raw values"
        )
    out = []
    for p, raw in zip(predictions, raw_values, strict=True):
        out.append(
            AuditRecord(
                prediction_id=p.prediction_id,
                message_id=p.message_id,
                sample_id=p.sample_id,
                instrument_id=p.instrument_id,
                timestamp=p.timestamp,
                published_at=p.published_at,
                model_version=p.model_version,
                bundle_checksum=p.bundle_checksum,
                spectrum_sha256=hashlib.sha256(raw).hexdigest(),
                target=p.target,
                value=_finite_or_none(p.value),
                model=p.model,
                fallback_reason=p.fallback_reason,
                cnn_value=_finite_or_none(p.cnn_value),
                pls_value=_finite_or_none(p.pls_value),
                t2=_finite_or_none(p.t2),
                q=_finite_or_none(p.q),
                t2_limit=_finite_or_none(p.t2_limit),
                q_limit=_finite_or_none(p.q_limit),
                out_of_model=bool(p.out_of_model),
                releasable=bool(p.releasable),
                product=p.product,
                batch=p.batch,
                unit=p.unit,
            )
        )
    return out


def _column_type(name: str, real: str, boolean: str) -> str:
    # NamedTuple keeps postponed annotations as ForwardRef('float | None'): compare the text.
    t = AuditRecord.__annotations__[name]
    t = getattr(t, "__forward_arg__", t)
    if name in _TEXT_NOT_NULL:
        return "TEXT NOT NULL"
    if t == "bool":
        return f"{boolean} NOT NULL"
    if t == "float":
        return f"{real} NOT NULL"
    if t == "float | None":
        return real
    return "TEXT"


class AuditTrail(ABC):
    """Append-only store of :class:`AuditRecord` (thread-safe)."""

    def append_many(self, records: Sequence[AuditRecord]) -> int:
        """Append records in one transaction; returns how many were new (by prediction id)."""
        if not records:
            return 0
        now = time.time()
        rows = [(*r, now) for r in records]
        with self._lock:
            return self._insert_rows(rows)

    @abstractmethod
    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert ``(*columns, recorded_at)`` rows in one transaction (lock held); new rows."""

    #: SQL parameter placeholder of the backend's driver.
    _placeholder = "?"
    _lock: threading.Lock
    _db: Any

    @abstractmethod
    def _select(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run a read query; raise :class:`AuditError` on a database error."""

    def query(
        self,
        sample_id: str | None = None,
        since: float | None = None,
        instrument: str | None = None,
        message_id: str | None = None,
        until: float | None = None,
        limit: int | None = 1000,
        batch: str | None = None,
        product: str | None = None,
    ) -> list[AuditRecord]:
        """Records matching all given filters (``since``/``until``: published_at, epoch s),
        in append order; ``limit`` None returns all."""
        where, params = _where(
            self._placeholder,
            {
                "sample_id = {}": sample_id,
                "instrument_id = {}": instrument,
                "message_id = {}": message_id,
                "batch = {}": batch,
                "product = {}": product,
                "published_at >= {}": since,
                "published_at < {}": until,
            },
        )
        sql = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{where} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_record(r) for r in self._select(sql, params)]

    def duplicate_message_ids(self) -> dict[str, int]:
        """Message ids with more than one publication, and how many each."""
        sql = f"SELECT message_id, COUNT(*) FROM {TABLE} GROUP BY message_id HAVING COUNT(*) > 1"
        return {m: int(n) for m, n in self._select(sql, ())}

    def count(self) -> int:
        """Number of records."""
        return int(self._select(f"SELECT COUNT(*) FROM {TABLE}", ())[0][0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _where(ph: str, filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQL ``WHERE`` clause (``{}`` in each condition becomes the placeholder) and its values,
    for the filters that are not None."""
    conds: list[str] = []
    params: list[Any] = []
    for cond, value in filters.items():
        if value is not None:
            conds.append(cond.format(ph))
            params.append(value)
    return (" WHERE " + " AND ".join(conds)) if conds else "", params


def _record(row: Sequence[Any]) -> AuditRecord:
    values = list(row)
    for i, name in enumerate(COLUMNS):
        if name in ("out_of_model", "releasable"):
            values[i] = bool(values[i])
    return AuditRecord(*values)


class SQLiteAuditTrail(AuditTrail):
    """SQLite backend: WAL journal (readers never block the worker), triggers refuse changes."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The worker may append from another thread than the one that opened it.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._create()
        except (sqlite3.Error, OSError) as exc:
            raise AuditError(f"cannot open SQLite audit trail {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" * len(COLUMNS))
        self._insert = (
            f"INSERT INTO {TABLE} ({cols}, recorded_at) VALUES ({marks}, ?) "
            "ON CONFLICT(prediction_id) DO NOTHING"
        )

    def _create(self) -> None:
        cols = ",\n  ".join(f"{c} {_column_type(c, 'REAL', 'INTEGER')}" for c in COLUMNS)
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS {TABLE} (
              seq INTEGER PRIMARY KEY AUTOINCREMENT,
              {cols},
              recorded_at REAL NOT NULL,
              UNIQUE(prediction_id)
            );
            CREATE INDEX IF NOT EXISTS {TABLE}_sample ON {TABLE}(sample_id);
            CREATE INDEX IF NOT EXISTS {TABLE}_message ON {TABLE}(message_id);
            CREATE INDEX IF NOT EXISTS {TABLE}_published ON {TABLE}(published_at);
            -- INSERT OR REPLACE deletes the old row without firing DELETE triggers (unless
            -- recursive_triggers is on in *that* connection): skip any insert that would
            -- collide, which also makes a retried append a no-op.
            CREATE TRIGGER IF NOT EXISTS {TABLE}_no_replace BEFORE INSERT ON {TABLE}
            WHEN EXISTS (SELECT 1 FROM {TABLE} WHERE prediction_id = NEW.prediction_id)
              OR EXISTS (SELECT 1 FROM {TABLE} WHERE seq = NEW.seq)
            BEGIN SELECT RAISE(IGNORE); END;
            CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE}
            BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE refused'); END;
            CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE}
            BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE refused'); END;
            """
        )

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> int:
        try:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(self._insert, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before
        except sqlite3.Error as exc:
            raise AuditError(f"audit append of {len(rows)} records failed: {exc}") from exc

    def _select(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"audit query failed: {exc}") from exc


def open_audit_trail(settings: AuditSettings) -> AuditTrail:
    """The configured backend, schema created if needed."""
    if settings.backend == "postgres":
        if settings.dsn is None:
            raise ConfigError("NIRWATCH_AUDIT_BACKEND=postgres needs NIRWATCH_AUDIT_DSN")
        from nirwatch.records.audit_postgres import PostgresAuditTrail

        return PostgresAuditTrail(settings.dsn.get_secret_value())
    # Fail at start, naming the variable, when the directory cannot be written.
    writable_dir(settings.path.parent, "NIRWATCH_AUDIT_PATH")
    return SQLiteAuditTrail(settings.path, settings.sqlite_synchronous)
