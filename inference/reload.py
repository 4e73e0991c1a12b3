"""Where the worker's predictor comes from, and hot reload of the registry's champion.

The worker asks its source for the current predictor *between* micro-batches only, so a
batch is always predicted by one model and a reload never loses or reorders messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from nirwatch.errors import ChecksumMismatchError, ModelError, NirwatchError
from nirwatch.logs import log_event
from nirwatch.metrics import WorkerMetrics
from nirwatch.models.predictor import Predictor

log = logging.getLogger(__name__)


class PredictorSource(Protocol):
    """Gives the worker the predictor to use for the next micro-batch."""

    def current(self) -> Predictor:
        """The predictor to use now (may load or swap; never raises once one is loaded)."""
        ...


class ChampionEntry(Protocol):
    """The champion as the registry records it (:class:`nirwatch.models.registry.ChampionEntry`)."""

    @property
    def version(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def checksum(self) -> str: ...


class ChampionRegistry(Protocol):
    """The part of :class:`nirwatch.models.registry.ModelRegistry` the worker needs."""

    def champion_entry(self) -> ChampionEntry | None: ...

    def champion_version(self) -> str | None: ...


class StaticSource:
    """Always the same predictor (a fixed bundle, or a test model)."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor

    def current(self) -> Predictor:
        return self._predictor


class RegistrySource:
    """The registry's champion, reloaded when a new version is promoted.

    The champion version is checked at most every ``interval_s`` seconds. A version that fails
    to load (bad checksum, missing file...) is counted as ``model_reloads{outcome="failed"}``,
    the previous predictor keeps serving, and that version is not tried again: only a newly
    promoted version is. Successful swaps count ``outcome="success"`` (the first load is not a
    reload and is not counted). A bundle whose checksum (its manifest's SHA-256, computed from
    the very bytes that were loaded) differs from the one the registry recorded for the
    champion is refused like any other failure: an edited copy is never served.

    Parameters
    ----------
    registry : ChampionRegistry
    loader : callable
        ``loader(bundle_dir) -> Predictor``, e.g. ``nirwatch.models.bundle.load_bundle`` bound to a device.
    metrics : WorkerMetrics
    interval_s : float
    clock : callable
        Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        registry: ChampionRegistry,
        loader: Callable[[Path], Predictor],
        metrics: WorkerMetrics,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.loader = loader
        self.metrics = metrics
        self.interval_s = interval_s
        self._clock = clock
        self._predictor: Predictor | None = None
        self._version: str | None = None
        self._failed: str | None = None
        self._next_check = float("-inf")

    @property
    def version(self) -> str | None:
        """The registry version being served (None before the first load)."""
        return self._version

    def current(self) -> Predictor:
        """The champion's predictor; checks for a new champion when the interval has passed.

        Raises
        ------
        ModelError
            Only when no predictor was ever loaded (no champion, or it fails to load).
        """
        now = self._clock()
        if self._predictor is None or now >= self._next_check:
            self._next_check = now + self.interval_s
            self._check()
        if self._predictor is None:
            raise ModelError(
                "no model to serve: the registry has no loadable champion "
                f"(last failed version: {self._failed})"
            )
        return self._predictor

    def _check(self) -> None:
        try:
            version = self.registry.champion_version()
        except (NirwatchError, OSError) as exc:
            log.warning("cannot read the registry's champion: %s", exc)
            return
        if version is None or version == self._version or version == self._failed:
            return
        try:
            entry = self.registry.champion_entry()
            if entry is None:
                return
            version = entry.version
            predictor = self.loader(entry.path)
            if predictor.checksum != entry.checksum:
                raise ChecksumMismatchError(
                    f"{entry.path}: bundle checksum {predictor.checksum} differs from "
                    f"{entry.checksum} recorded for champion {version}"
                )
        except (NirwatchError, OSError, ValueError, RuntimeError) as exc:
            # Keep serving the previous champion: a bad bundle must never stop inference.
            self._failed = version
            self.metrics.model_reloads.labels("failed").inc()
            log_event(
                log, "model_reload_failed", level=logging.ERROR, version=version,
                keeping=self._version, error=str(exc),
            )  # fmt: skip
            return
        previous = self._version
        if self._predictor is not None:  # the first load is a start, not a reload
            self.metrics.model_reloads.labels("success").inc()
        self._predictor, self._version, self._failed = predictor, version, None
        log_event(
            log, "model_reloaded" if previous else "model_loaded", version=version,
            previous=previous, checksum=predictor.checksum,
        )  # fmt: skip
