"""Name-to-class registry and pickle-free (de)serialisation of preprocessing pipelines.

Every registered class implements ``to_state() -> (arrays, meta)`` and
``from_state(arrays, meta)``; see docs/CONTRACTS.md. A list of steps is stored as one flat
dict of arrays (keys ``<prefix>.<i>.<name>``, ready for ``np.savez``) plus JSON-able metadata
naming each step's class, so loading never executes stored code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, Self, TypeVar

import numpy as np

from nirwatch.chemometrics._base import StateArrays, StateMeta
from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.scatter import (
    ExtendedMultiplicativeScatterCorrection,
    MultiplicativeScatterCorrection,
    StandardNormalVariate,
)
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.errors import DataError


class Stateful(Protocol):
    """What a step must implement to be stored in a bundle."""

    def to_state(self) -> tuple[StateArrays, StateMeta]: ...

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self: ...


T = TypeVar("T", bound=type)

#: Classes that :func:`load_steps` may instantiate, by class name.
STEP_CLASSES: dict[str, Any] = {}


def register_step(cls: T) -> T:
    """Add a class to :data:`STEP_CLASSES` (usable as a decorator)."""
    for attr in ("to_state", "from_state"):
        if not callable(getattr(cls, attr, None)):
            raise TypeError(f"{cls.__name__} lacks {attr}() and cannot be stored")
    STEP_CLASSES[cls.__name__] = cls
    return cls


for _cls in (
    MultiplicativeScatterCorrection,
    ExtendedMultiplicativeScatterCorrection,
    StandardNormalVariate,
    SavitzkyGolay,
    WavelengthRange,
    SpectralAugmenter,
):
    register_step(_cls)


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
        name = type(step).__name__
        if STEP_CLASSES.get(name) is not type(step):
            raise DataError(f"step {i} ({name}) is not a registered class: {sorted(STEP_CLASSES)}")
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
        name = entry.get("class")
        cls = STEP_CLASSES.get(name)
        if cls is None:
            raise DataError(f"step {i}: unknown class {name!r}; known: {sorted(STEP_CLASSES)}")
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
