"""Exception hierarchy: one root, specific subclasses where callers act on them."""

from __future__ import annotations

from typing import Any


class NirwatchError(Exception):
    """Root of every error nirwatch raises on purpose."""


class ConfigError(NirwatchError):
    """A setting is missing or invalid; the message names the variable."""


class WireFormatError(NirwatchError):
    """A message on the wire cannot be decoded or fails validation.

    Parameters
    ----------
    reason : str
        A short, bounded reason code (used as a metric label and a dead-letter header),
        e.g. ``"bad_magic"``, ``"non_finite"``, ``"length_mismatch"``.
    detail : str
        Human-readable explanation naming what was expected and what arrived.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DataError(NirwatchError, ValueError):
    """Training or prediction data is unusable (NaN rows, grid mismatch, missing target...).

    Also a :class:`ValueError`, the error scikit-learn raises (and its estimator checks expect)
    for invalid input, so code written for scikit-learn estimators handles ours.
    """


class ModelError(NirwatchError):
    """A model cannot be fitted, loaded or applied."""


class BundleError(ModelError):
    """A model bundle is malformed, incomplete or fails verification."""


class ChecksumMismatchError(BundleError):
    """A bundle file's checksum or signature does not match its manifest."""


class ManifestError(BundleError):
    """A manifest field is missing, of the wrong type or out of range (the message names it)."""

    def __init__(self, field: str, expected: str, got: Any) -> None:
        shown = repr(got)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"manifest field {field!r}: expected {expected}, got {shown}")
        self.field = field


class RegistryError(NirwatchError):
    """The model registry refuses an operation (unknown version, nothing to roll back to...)."""


class BrokerUnavailableError(NirwatchError):
    """No Kafka broker could be reached or started."""


class BrokerNotConfiguredError(ConfigError):
    """A service was started without ``NIRWATCH_KAFKA_BOOTSTRAP``: it refuses to run.

    Services never start a private broker (a producer and a consumer on two private brokers
    would each look healthy while nothing flows); only ``nirwatch demo`` and tests do.
    """


class PortInUseError(ConfigError):
    """A listening port (metrics, webhook, broker) is already taken by another process."""
