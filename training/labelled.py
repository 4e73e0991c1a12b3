"""Labelled spectra for retraining: a data set, and the bounded buffer that pairs recent
spectra with their lab values by sample id (the retrain service's and the drift demo's)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nirwatch.errors import DataError
from nirwatch.io.datasets import SpectraDataset
from nirwatch.records.sample_join import SampleJoin

__all__ = ["Dataset", "LabelledBuffer"]


@dataclass(frozen=True)
class Dataset:
    """Labelled spectra: X (n, p), y (n,), wavelengths (p,), sample ids (n,) optional."""

    X: np.ndarray
    y: np.ndarray
    wavelengths: np.ndarray
    sample_ids: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.X.ndim != 2 or self.X.shape != (self.y.size, self.wavelengths.size):
            raise DataError(
                f"expected X of shape ({self.y.size}, {self.wavelengths.size}), got {self.X.shape}"
            )

    def __len__(self) -> int:
        return int(self.y.size)

    def subset(self, idx: np.ndarray) -> Dataset:
        ids = [self.sample_ids[i] for i in idx] if len(self.sample_ids) else []
        return Dataset(self.X[idx], self.y[idx], self.wavelengths, ids)

    @classmethod
    def from_spectra(cls, data: SpectraDataset) -> Dataset:
        """The labelled spectra of a file read by :func:`nirwatch.io.datasets.load_spectra`.

        Raises
        ------
        DataError
            When the file was read without a target.
        """
        if data.y is None:
            raise DataError(f"{data.source}: no target: load it with one to retrain on it")
        return cls(data.X, data.y, data.wavelengths)


class LabelledBuffer:
    """Recent spectra joined to their lab values by sample id, in bounded memory (thread-safe).

    Keeps the last ``max_size`` labelled spectra; of the unpaired, up to ``4 * max_size``
    spectra (most never get a lab value) and ``max_size`` lab values.
    """

    def __init__(self, wavelengths: np.ndarray, max_size: int = 5000) -> None:
        self.wavelengths = np.asarray(wavelengths, dtype=float)
        self.max_size = max_size
        self._join: SampleJoin[np.ndarray, float] = SampleJoin(4 * max_size, max_size)
        self._labelled: deque[tuple[str, np.ndarray, float]] = deque(maxlen=max_size)
        self._lock = threading.Lock()

    def add_spectrum(self, sample_id: str, spectrum: np.ndarray) -> None:
        with self._lock:
            self._keep(sample_id, self._join.add_left(sample_id, spectrum))

    def add_lab(self, sample_id: str, value: float) -> None:
        with self._lock:
            self._keep(sample_id, self._join.add_right(sample_id, value))

    def _keep(self, sample_id: str, pair: tuple[np.ndarray, float] | None) -> None:
        if pair is not None:
            self._labelled.append((sample_id, *pair))

    def dataset(self) -> Dataset:
        with self._lock:
            items = list(self._labelled)
        p = self.wavelengths.size
        X = np.array([s for _, s, _ in items], dtype=float).reshape(len(items), p)
        return Dataset(
            X, np.array([v for *_, v in items]), self.wavelengths, [i for i, *_ in items]
        )
