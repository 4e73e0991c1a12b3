"""The one registry of storable classes, and pickle-free (de)serialisation of pipelines.

Every class that a model bundle may hold (preprocessing steps, the PLS calibration, the T²/Q
statistics, the CNN) implements :class:`Stateful` (``to_state() -> (arrays, meta)`` and
``from_state(arrays, meta)``; see docs/CONTRACTS.md) and registers itself with
:func:`register_stateful`. Loading resolves a stored class name with :func:`stateful_class`,
which knows only registered classes, so loading never executes stored code. A list of steps is
stored as one flat dict of arrays (keys ``<prefix>.<i>.<name>``, ready for ``np.savez``) plus
JSON-able metadata naming each step's class.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol, Self, TypeVar

import numpy as np

from nirwatch.chemometrics._base import StateArrays, StateMeta
from nirwatch.errors import DataError


class Stateful(Protocol):
    """A fitted component that can be stored without pickle (docs/CONTRACTS.md)."""

    def to_state(self) -> tuple[StateArrays, StateMeta]: ...

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self: ...


T = TypeVar("T", bound=type)

#: Modules whose classes register themselves on import. :func:`stateful_class` imports them
#: when a name is not registered yet (the CNN's module needs torch, so it is not imported
#: eagerly); nothing outside this allowlist is ever imported on a stored name's account.
STATEFUL_MODULES = tuple(
    f"nirwatch.chemometrics.{m}"
    for m in (
        "scatter",
        "scaling",
        "derivative",
        "selection",
        "augmentation",
        "pls",
        "pls_average",
        "diagnostics",
        "cnn",
    )
)

_CLASSES: dict[str, type] = {}


def register_stateful(cls: T) -> T:
    """Allow ``cls`` (by its ``__name__``) to be stored and loaded; usable as a decorator."""
    for attr in ("to_state", "from_state"):
        if not callable(getattr(cls, attr, None)):
            raise TypeError(f"{cls.__name__} lacks {attr}() and cannot be stored")
    _CLASSES[cls.__name__] = cls
    return cls


def stateful_class(name: str) -> Any:
    """The registered class called ``name``.

    Raises
    ------
    DataError
        No registered class has that name (after importing :data:`STATEFUL_MODULES`).
    """
    if name not in _CLASSES:
        for module in STATEFUL_MODULES:
            try:
                importlib.import_module(module)
            except ImportError:  # e.g. the CNN module without torch
                continue
            if name in _CLASSES:
                break
        else:
            raise DataError(
                f"unknown class {name!r}, which nirwatch lacks; known: {sorted(_CLASSES)}"
            )
    return _CLASSES[name]


def dump_steps(steps: Sequence[Any], prefix: str = "step") -> tuple[StateArrays, StateMeta]:
    """Fitted steps to ``(arrays, meta)``.

    Parameters
    ----------
    steps : sequence of fitted, registered transformers
    prefix : str
        Array key prefix, so several step lists can share one npz file.

    Returns
    -------
    arrays : dict of str to ndarray, keys ``f"{prefix}.{i}.{name}"``
    meta : dict, ``{"prefix": prefix, "steps": [{"class", "meta", "arrays"}]}``
    """
    arrays: StateArrays = {}
    entries: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        cls: type = type(step)
        name = cls.__name__
        if _CLASSES.get(name) is not cls:
            raise DataError(f"step {i} ({name}) is not a registered class: {sorted(_CLASSES)}")
        step_arrays, step_meta = step.to_state()
        for key, value in step_arrays.items():
            arrays[f"{prefix}.{i}.{key}"] = np.asarray(value)
        entries.append({"class": name, "meta": step_meta, "arrays": sorted(step_arrays)})
    return arrays, {"prefix": prefix, "steps": entries}


def load_steps(arrays: StateArrays, meta: StateMeta) -> list[Any]:
    """Rebuild the fitted steps written by :func:`dump_steps`.

    Raises
    ------
    DataError
        An unknown class name or a missing array.
    """
    prefix = meta.get("prefix", "step")
    steps = []
    for i, entry in enumerate(meta.get("steps", [])):
        try:
            cls = stateful_class(str(entry.get("class")))
        except DataError as exc:
            raise DataError(f"step {i}: {exc}") from None
        name = cls.__name__
        step_arrays = {}
        for key in entry.get("arrays", []):
            full = f"{prefix}.{i}.{key}"
            if full not in arrays:
                raise DataError(f"step {i} ({name}): array {full!r} missing from the state")
            step_arrays[key] = np.asarray(arrays[full])
        steps.append(cls.from_state(step_arrays, entry["meta"]))
    return steps


def apply_steps(steps: Sequence[Any], X: np.ndarray) -> np.ndarray:
    """Apply fitted steps in order: ``steps[-1].transform(... steps[0].transform(X))``.

    A spectrum that a step turns non-finite (MSC/EMSC of a spectrum with nothing of the
    reference in it, SNV of a flat one) comes out as a row of NaN instead of failing the whole
    batch: the later steps see zeros in its place. Its predictions are then NaN and its
    diagnostics out of model, so it is published as not releasable and the rest of the batch is
    served.
    """
    bad: np.ndarray | None = None
    for step in steps:
        X = step.transform(X)
        rows = ~np.isfinite(X).all(axis=1)
        if rows.any():
            bad = rows if bad is None else bad | rows
            X = np.array(X, copy=True)
            X[rows] = 0.0
    if bad is not None:
        X[bad] = np.nan
    return X
