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

import collections
import hashlib
import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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


#: Prediction fields the audit table does not have: the interval came after the table (a
#: column added here would not exist in audit databases written before), and every record
#: has the same schema. ``spectrum_sha256`` was a column before it was a Prediction field.
NOT_AUDITED = ("interval_low", "interval_high", "schema")
#: The table's column order, fixed when it was created (existing databases and the output of
#: ``nirwatch audit --json`` keep it): identity and provenance first, with the hash of the
#: spectrum after the model's checksum, and the production context last; the other columns
#: follow the Prediction's field order.
_LEADING = (
    "prediction_id", "message_id", "sample_id", "instrument_id", "timestamp", "published_at",
    "model_version", "bundle_checksum", "spectrum_sha256",
)  # fmt: skip
_TRAILING = ("product", "batch", "unit")


def _audit_fields() -> list[tuple[str, str]]:
    """(column, type as written in Prediction) of the audit table, in column order."""
    types = {f.name: str(f.type) for f in fields(Prediction) if f.name not in NOT_AUDITED}
    rest = [name for name in types if name not in _LEADING + _TRAILING]
    return [(name, types[name]) for name in (*_LEADING, *rest, *_TRAILING)]


#: Column name -> the Prediction field's type, as source text (``"float | None"``).
COLUMN_TYPES: dict[str, str] = dict(_audit_fields())
COLUMNS: tuple[str, ...] = tuple(COLUMN_TYPES)

if TYPE_CHECKING:

    class AuditRecord(tuple[Any, ...]):
        """Static view of the generated named tuple below (its fields are Prediction's)."""

        _fields: tuple[str, ...]

        def __new__(cls, *values: Any, **columns: Any) -> AuditRecord: ...
        def __getattr__(self, name: str) -> Any: ...
        def _asdict(self) -> dict[str, Any]: ...
        @classmethod
        def _make(cls, values: Iterable[Any]) -> AuditRecord: ...

else:
    #: One published prediction as recorded: the audited fields of
    #: :class:`~nirwatch.messages.prediction.Prediction` (``spectrum_sha256`` among them: the
    #: SHA-256 of the raw spectrum message), in :data:`COLUMNS` order. A named tuple rather than a
    #: frozen dataclass: the worker builds one per published prediction, and a frozen
    #: dataclass of 24 fields costs ~7 µs to construct (one ``object.__setattr__`` per field),
    #: a named tuple ~1 µs; it is also the database row as is.
    AuditRecord = collections.namedtuple("AuditRecord", COLUMNS)


def _same(x: Any) -> Any:
    return x


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
        The spectrum messages' values exactly as consumed. A prediction's own
        ``spectrum_sha256`` must be theirs; one without (``""``, a ``/1`` record) gets it.

    Raises
    ------
    AuditError
        When the lengths differ, or a prediction's hash is not its raw value's.
    """
    if len(predictions) != len(raw_values):
        raise AuditError(
            f"expected one raw value per prediction: {len(predictions)} predictions, "
            f"{len(raw_values)} raw values"
        )
    # The audit holds finite numbers or None, and real booleans, whatever the record held.
    convert: dict[str, Callable[[Any], Any]] = {"float | None": _finite_or_none, "bool": bool}
    columns = [(name, convert.get(kind, _same)) for name, kind in COLUMN_TYPES.items()]
    out = []
    for p, raw in zip(predictions, raw_values, strict=True):
        row = {name: conv(getattr(p, name)) for name, conv in columns}
        sha = hashlib.sha256(raw).hexdigest()
        if p.spectrum_sha256 and p.spectrum_sha256 != sha:
            raise AuditError(
                f"prediction {p.prediction_id} says spectrum_sha256 {p.spectrum_sha256}, "
                f"its raw spectrum's is {sha}"
            )
        row["spectrum_sha256"] = sha
        out.append(AuditRecord(**row))
    return out


def _column_type(name: str, real: str, boolean: str) -> str:
    """The SQL type of a column, from the Prediction field's type."""
    return {
        "str": "TEXT NOT NULL",
        "str | None": "TEXT",
        "bool": f"{boolean} NOT NULL",
        "float": f"{real} NOT NULL",
        "float | None": real,
    }[COLUMN_TYPES[name]]


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
