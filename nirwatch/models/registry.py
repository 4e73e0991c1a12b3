"""Versioned model registry on the local filesystem.

Layout under the registry root::

    <root>/
      models/<version>/   one verified bundle per version (see nirwatch.models.bundle), read-only
                          once registered; never modified or deleted by nirwatch
      champion.json       {"version", "checksum", "promoted_at", "history": [...]}: the model
                          the workers serve, with its manifest's SHA-256 (the bundle checksum),
                          which every loader compares before serving; replaced atomically (write, fsync, rename), so a
                          reader sees the old or the new champion, never a partial file.
                          ``history`` holds the previous champions, oldest first, for rollback.
      events.jsonl        append-only log, one JSON object a line: register / promote / rollback
                          with time, version, checksum and the previous champion; the
                          register event's checksum is what promotion compares against
      .staging/           copies in progress (hidden; a crash leaves at most garbage here)
      .lock               advisory lock serialising writers (several CLIs, a retraining service)

A version's status is derived, not stored: ``champion`` (named by champion.json), ``previous``
(in the champion's history: a rollback target) or ``candidate`` (registered, never promoted).
Workers poll :meth:`ModelRegistry.champion_version` (one small file read) to hot-reload.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from nirwatch.errors import BundleError, RegistryError
from nirwatch.models.bundle import bundle_checksum, fsync_dir, read_manifest, verify_bundle
from nirwatch.settings import NirwatchSettings

CHAMPION = "champion.json"
EVENTS = "events.jsonl"


class RegistrySettings(NirwatchSettings):
    """Where the registry lives and the bundle signing key (``NIRWATCH_REGISTRY_*``).

    ``hmac_key`` set: bundles are signed when written and must verify to be registered,
    promoted or loaded.
    """

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_REGISTRY_", frozen=True, extra="ignore")

    dir: Path | None = None
    hmac_key: SecretStr | None = None

    def key(self) -> str | None:
        return self.hmac_key.get_secret_value() if self.hmac_key else None


@dataclass(frozen=True, slots=True)
class ChampionEntry:
    """The champion as champion.json records it: what a worker must serve, and its digest."""

    version: str
    path: Path
    checksum: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One registered version, as :meth:`ModelRegistry.list` reports it."""

    version: str
    status: str
    created_at: str
    checksum: str
    target: str
    unit: str
    has_cnn: bool
    metrics: dict[str, Any]
    path: Path


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _make_read_only(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            os.chmod(p, p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class ModelRegistry:
    """A registry rooted at ``root`` (created on first write).

    Parameters
    ----------
    root : path
        Registry directory.
    hmac_key : str or bytes, optional
        When set, bundles must carry a valid HMAC signature to be registered or promoted.
    """

    def __init__(self, root: str | Path, hmac_key: str | bytes | None = None) -> None:
        self.root = Path(root)
        self.hmac_key = hmac_key
        self.models = self.root / "models"

    # ---- reads (no lock: every file they read is replaced atomically or immutable)

    def champion_version(self) -> str | None:
        """The champion's version, or None before the first promotion (cheap)."""
        state = self._champion_state()
        return None if state is None else str(state["version"])

    def champion(self) -> Path | None:
        """Path of the champion's bundle, or None before the first promotion."""
        version = self.champion_version()
        return None if version is None else self.models / version

    def champion_entry(self) -> ChampionEntry | None:
        """The champion's version, path and recorded checksum (one read of champion.json).

        A loader passes ``checksum`` as ``expected_checksum`` to
        :func:`nirwatch.models.bundle.load_bundle`: an edited copy of the bundle is then refused even
        without an HMAC key.
        """
        state = self._champion_state()
        if state is None:
            return None
        checksum = state.get("checksum")
        if not isinstance(checksum, str) or not checksum:
            raise RegistryError(f"{self.root / CHAMPION} records no checksum for the champion")
        version = str(state["version"])
        return ChampionEntry(version, self.path(version), checksum)

    def registered_checksum(self, version: str) -> str:
        """The bundle checksum recorded when ``version`` was registered (raises if none)."""
        recorded = [
            e.get("checksum")
            for e in self.events()
            if e.get("event") == "register" and e.get("version") == version
        ]
        if not recorded or not isinstance(recorded[-1], str):
            raise RegistryError(f"{version}: no checksum was recorded when it was registered")
        return recorded[-1]

    def path(self, version: str) -> Path:
        """Path of a registered version's bundle (raises if unknown)."""
        p = self.models / version
        if not version or "/" in version or version.startswith(".") or not p.is_dir():
            known = ", ".join(sorted(self._versions())) or "none"
            raise RegistryError(f"unknown model version {version!r} (registered: {known})")
        return p

    def list(self) -> builtins.list[ModelInfo]:
        """Every registered version, oldest first, with its status.

        A version whose manifest cannot be read is listed with status ``unreadable`` rather
        than hiding the others (``list`` is what an operator runs when something is wrong).
        """
        state = self._champion_state() or {}
        champion = state.get("version")
        previous = {h["version"] for h in state.get("history", [])}
        out = []
        for version in self._versions():
            p = self.models / version
            try:
                m = read_manifest(p)
                checksum = bundle_checksum(p)
            except (BundleError, OSError):
                m, checksum = {"target": {"name": "?", "unit": "?"}}, ""
            status = (
                "unreadable"
                if not checksum
                else "champion"
                if version == champion
                else "previous"
                if version in previous
                else "candidate"
            )
            out.append(
                ModelInfo(
                    version=version,
                    status=status,
                    created_at=str(m.get("created_at", "")),
                    checksum=checksum,
                    target=str(m["target"]["name"]),
                    unit=str(m["target"]["unit"]),
                    has_cnn=bool(m.get("models", {}).get("cnn")),
                    metrics=dict(m.get("metrics", {})),
                    path=p,
                )
            )
        return sorted(out, key=lambda i: (i.created_at, i.version))

    def events(self) -> builtins.list[dict[str, Any]]:
        """The event log, oldest first."""
        f = self.root / EVENTS
        if not f.exists():
            return []
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]

    # ---- writes (under the lock)

    def register(self, bundle_dir: str | Path) -> str:
        """Verify a bundle and copy it in as a candidate; return its version.

        Registering the same bundle twice is a no-op; a different bundle under an existing
        version is refused.
        """
        src = Path(bundle_dir)
        try:
            manifest = verify_bundle(src, self.hmac_key)
        except BundleError as exc:
            raise RegistryError(f"refusing to register {src}: {exc}") from exc
        version = str(manifest["version"])
        checksum = bundle_checksum(src)
        with self._locked():
            dest = self.models / version
            if dest.exists():
                if bundle_checksum(dest) == checksum:
                    return version
                raise RegistryError(
                    f"version {version} is already registered with checksum "
                    f"{bundle_checksum(dest)[:12]}; got a different bundle ({checksum[:12]})"
                )
            staging = self.root / ".staging" / uuid.uuid4().hex
            staging.parent.mkdir(parents=True, exist_ok=True)
            # Under the lock no copy is in progress: whatever is here was left by a crash.
            for stale in staging.parent.iterdir():
                shutil.rmtree(stale, ignore_errors=True)
            try:
                shutil.copytree(src, staging)
                for f in staging.rglob("*"):
                    if f.is_file():
                        with f.open("rb") as fh:
                            os.fsync(fh.fileno())
                # Verify the copy, not only the source: what workers load is what was checked
                # (and its manifest is the one whose digest the register event records).
                verify_bundle(staging, self.hmac_key, expected_checksum=checksum)
                _make_read_only(staging)
                fsync_dir(staging)
                self.models.mkdir(parents=True, exist_ok=True)
                os.rename(staging, dest)
                fsync_dir(self.models)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._event("register", version=version, checksum=checksum, source=str(src))
        return version

    def promote(self, version: str) -> None:
        """Make ``version`` the champion (verified first); the old one becomes rollback target."""
        with self._locked():
            p = self.path(version)
            try:
                checksum = self.registered_checksum(version)
                verify_bundle(p, self.hmac_key, expected_checksum=checksum)
            except (BundleError, RegistryError) as exc:
                raise RegistryError(f"refusing to promote {version}: {exc}") from exc
            state = self._champion_state()
            if state is not None and state["version"] == version:
                raise RegistryError(f"{version} is already the champion")
            history = [] if state is None else [*state["history"], _entry(state)]
            self._write_champion(version, checksum, history)
            self._event(
                "promote",
                version=version,
                checksum=checksum,
                previous=None if state is None else state["version"],
            )

    def rollback(self) -> str:
        """Make the previous champion the champion again; return its version."""
        with self._locked():
            state = self._champion_state()
            if state is None or not state["history"]:
                raise RegistryError("nothing to roll back to: no previous champion")
            *history, prev = state["history"]
            p = self.path(prev["version"])
            try:
                verify_bundle(p, self.hmac_key, expected_checksum=prev.get("checksum"))
            except BundleError as exc:
                raise RegistryError(f"refusing to roll back to {prev['version']}: {exc}") from exc
            self._write_champion(prev["version"], prev["checksum"], history)
            self._event(
                "rollback",
                version=prev["version"],
                checksum=prev["checksum"],
                previous=state["version"],
            )
            return str(prev["version"])

    # ---- internals

    def _versions(self) -> builtins.list[str]:
        if not self.models.is_dir():
            return []
        return [p.name for p in self.models.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _champion_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads((self.root / CHAMPION).read_bytes())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{self.root / CHAMPION} is corrupt: {exc}") from exc
        if not isinstance(state, dict) or "version" not in state:
            raise RegistryError(f"{self.root / CHAMPION} is corrupt: no version")
        state.setdefault("history", [])
        return state

    def _write_champion(
        self, version: str, checksum: str, history: builtins.list[dict[str, Any]]
    ) -> None:
        state = {
            "version": version,
            "checksum": checksum,
            "promoted_at": _now(),
            "history": history,
        }
        tmp = self.root / f".{CHAMPION}.{uuid.uuid4().hex[:8]}"
        with tmp.open("w") as f:
            json.dump(state, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / CHAMPION)
        fsync_dir(self.root)

    def _event(self, event: str, **fields: Any) -> None:
        line = json.dumps({"time": _now(), "event": event, **fields}, sort_keys=True)
        with (self.root / EVENTS).open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _entry(state: dict[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("version", "checksum", "promoted_at") if k in state}
