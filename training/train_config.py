"""How a :class:`~nirwatch.chemometrics.cnn.SpectralCNN` is trained: :class:`TrainConfig`
and the learning-rate schedule it names (the network's shape is
:class:`~nirwatch.chemometrics.cnn.CNNConfig`; the loop is :mod:`training.cnn`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from nirwatch.errors import ModelError

__all__ = ["Schedule", "TrainConfig", "make_scheduler"]

Schedule = Literal["onecycle", "cosine", "plateau", "constant"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train (not what to train: that is :class:`CNNConfig`).

    The defaults are the settings chosen by cross-validation on the shootout calibration set
    (docs/results/shootout.md).

    Parameters
    ----------
    epochs : int
        Maximum passes over the (augmented) training set.
    batch_size : int
    learning_rate : float
        Peak learning rate (OneCycle) or initial rate (others).
    weight_decay : float
        AdamW decoupled weight decay (Loshchilov & Hutter 2019).
    schedule : {"onecycle", "cosine", "plateau", "constant"}
        OneCycle (Smith & Topin 2019) and cosine step per batch; plateau halves the rate after
        ``patience // 2`` epochs without a better validation RMSE.
    patience : int
        Early stopping: stop after this many epochs without a better validation RMSE; the
        best epoch's weights are restored.
    seed : int
        Seeds weight initialisation, dropout and batch order.
    deterministic : bool
        ``torch.use_deterministic_algorithms(True)`` while training (bit-identical reruns on
        the same device, possibly slower on CUDA; there cuBLAS also needs the environment
        variable ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set before the process starts).
    device : {"auto", "cpu", "cuda"}
    num_threads : int, optional
        ``torch.set_num_threads`` for CPU training; None leaves torch's setting.
    progress : bool
        Show a rich progress bar.
    mixup : float
        Mixup (Zhang et al. 2018) on every mini-batch *after* preprocessing: each spectrum and
        its target are replaced by ``lam * a + (1 - lam) * b`` with a random partner ``b`` from
        the batch and ``lam ~ Beta(mixup, mixup)``; 0 = off. Spectra that are (after EMSC)
        close to linear in concentration make this a physically plausible augmentation that
        EMSC cannot undo, and it rewards a response that is linear between samples.
    mixup_extend : float
        Widens ``lam`` to ``[-e, 1 + e]`` (``lam' = lam * (1 + 2e) - e``): the mixed samples
        then also lie a little beyond the pair, i.e. linear extrapolation of spectra and target.
    restore_best : bool
        Restore the weights of the epoch with the best validation RMSE, and stop early after
        ``patience`` epochs without one. False trains all ``epochs`` and keeps the last weights:
        the validation fold then chooses nothing, so its predictions stay honest held-out
        predictions (what the ensemble's out-of-fold RMSECV and model selection rely on).
    shift_points : float
        Random shift of each preprocessed spectrum along the wavelength axis, uniform in
        ``[-shift_points, shift_points]`` points (linear interpolation, edges held), per batch;
        0 = off. Another variation EMSC does not model.
    """

    epochs: int = 80
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-3
    schedule: Schedule = "onecycle"
    patience: int = 30
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    num_threads: int | None = None
    progress: bool = False
    mixup: float = 0.4
    mixup_extend: float = 0.0
    shift_points: float = 0.0
    restore_best: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ModelError("TrainConfig: epochs, batch_size and patience must be >= 1")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ModelError("TrainConfig: learning_rate must be > 0 and weight_decay >= 0")
        if self.schedule not in ("onecycle", "cosine", "plateau", "constant"):
            raise ModelError(f"TrainConfig: unknown schedule {self.schedule!r}")
        for name in ("mixup", "mixup_extend", "shift_points"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ModelError(f"TrainConfig: {name} must be a finite number >= 0, got {value}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int
) -> tuple[Any, bool]:
    """The schedule and whether it steps per batch (True) or per epoch on the val RMSE."""
    if train.schedule == "onecycle":
        total = train.epochs * steps_per_epoch
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.learning_rate, total_steps=total
        ), True
    if train.schedule == "cosine":
        total = train.epochs * steps_per_epoch
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), True
    if train.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, train.patience // 2)
        ), False
    return None, True
