"""Training of :class:`~nirwatch.chemometrics.cnn.SpectralCNN`: augment, preprocess, fit.

The pipeline is the one Bjerrum, Glahder & Skov (2017, arXiv:1710.01927) found best: the raw
training spectra are *augmented* (random offset, tilt, gain and noise copies), and only then
preprocessed (e.g. EMSC), with the preprocessing fitted on the un-augmented spectra. The
network is trained with AdamW on the standardised target, a learning-rate schedule and early
stopping on a validation split that the caller carves from the calibration data (never the test
set). The K-fold ensemble built from it is in :mod:`training.cnn_ensemble`.

Layout follows torchvision's reference scripts: :func:`train_one_epoch`, :func:`evaluate`,
then the driver :func:`fit_cnn`.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from torch import nn

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.cnn import CNNConfig, CNNPredictor, SpectralCNN, resolve_device
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.chemometrics.state import apply_steps
from nirwatch.errors import DataError, ModelError
from training.cnn_progress import TrainingProgress
from training.fitted_cnn import FittedCNN
from training.train_config import Schedule, TrainConfig, make_scheduler

__all__ = [
    "FittedCNN",
    "Schedule",
    "TrainConfig",
    "augment_batch",
    "evaluate",
    "fit_cnn",
    "split_augmentation_steps",
    "train_one_epoch",
]


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    *,
    mixup: float = 0.0,
    mixup_extend: float = 0.0,
    shift_points: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """On-the-fly augmentation of a preprocessed batch x (b, L) and its target y (b,).

    See :class:`TrainConfig` (``mixup``, ``mixup_extend``, ``shift_points``). Random draws come
    from ``generator`` (CPU) so that training stays reproducible.
    """
    b, length = x.shape[0], x.shape[-1]
    if shift_points > 0:
        shift = (torch.rand(b, 1, generator=generator) * 2 - 1) * shift_points
        pos = torch.arange(length, dtype=torch.float32).unsqueeze(0) - shift
        pos = pos.clamp(0, length - 1)
        lo = pos.floor().long().clamp(max=length - 2)
        frac = (pos - lo).to(x.device, x.dtype)
        lo = lo.to(x.device)
        x = x.gather(1, lo) * (1 - frac) + x.gather(1, lo + 1) * frac
    if mixup > 0:
        # torch's Beta sampler takes no generator: seed numpy's from it instead.
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        beta = np.random.default_rng(seed).beta(mixup, mixup, b)
        lam = torch.from_numpy(beta * (1 + 2 * mixup_extend) - mixup_extend)
        perm = torch.randperm(b, generator=generator).to(x.device)
        lam = lam.to(x.device, x.dtype)
        x = lam[:, None] * x + (1 - lam[:, None]) * x[perm]
        y = lam * y + (1 - lam) * y[perm]
    return x, y


def train_one_epoch(
    model: SpectralCNN,
    optimizer: torch.optim.Optimizer,
    X: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    *,
    mixup: float = 0.0,
    mixup_extend: float = 0.0,
    shift_points: float = 0.0,
) -> float:
    """One pass over shuffled mini-batches; returns the mean standardised MSE.

    Parameters
    ----------
    X : tensor (n, L) on the model's device
    y : tensor (n,), the target already standardised with the model's ``y_mean``/``y_scale``
    scheduler : stepped after every batch when given (OneCycle, cosine)
    mixup, mixup_extend, shift_points : on-the-fly augmentation, see :func:`augment_batch`
    """
    model.train()
    order = torch.randperm(X.shape[0], generator=generator).to(X.device)
    total, count = 0.0, 0
    for start in range(0, X.shape[0], batch_size):
        idx = order[start : start + batch_size]
        xb, yb = X[idx], y[idx]
        if mixup > 0 or shift_points > 0:
            xb, yb = augment_batch(
                xb,
                yb,
                generator,
                mixup=mixup,
                mixup_extend=mixup_extend,
                shift_points=shift_points,
            )
        loss = nn.functional.mse_loss(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * idx.shape[0]
        count += idx.shape[0]
    return total / count


def evaluate(model: SpectralCNN, X: torch.Tensor, y: np.ndarray) -> tuple[float, np.ndarray]:
    """RMSE in the target's units and the predictions (n,) float64, in eval mode."""
    model.eval()
    with torch.inference_mode():
        pred = model.predict_units(X).double().cpu().numpy()
    return float(np.sqrt(np.mean((pred - y) ** 2))), pred


def split_augmentation_steps(steps: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Leading :class:`WavelengthRange` steps, then the rest.

    Augmentation is applied between the two, so that its spread and tilt refer to the
    modelled region rather than to wavelengths the model never sees.
    """
    steps = list(steps)
    k = 0
    while k < len(steps) and isinstance(steps[k], WavelengthRange):
        k += 1
    return steps[:k], steps[k:]


def check_xy(X: Any, y: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Training spectra X (n, p) and targets y (n,) as float64, n >= 2, all finite."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
        raise DataError(
            f"{who}: expected X (n, p) and y (n,) with n >= 2, got {X.shape} and {y.shape}"
        )
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise DataError(f"{who}: non-finite values in X or y")
    return X, y


def fit_cnn(
    X_train: Any,
    y_train: Any,
    X_val: Any,
    y_val: Any,
    config: CNNConfig,
    *,
    steps: Sequence[Any] = (),
    augmenter: SpectralAugmenter | None = None,
    train: TrainConfig | None = None,
    fitted_steps: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: TrainingProgress | None = None,
) -> FittedCNN:
    """Train one network: augment the raw training spectra, preprocess, fit, early-stop.

    Parameters
    ----------
    X_train : array-like (n, p), raw spectra
    y_train : array-like (n,)
    X_val, y_val : validation split carved from the calibration data, (m, p) and (m,)
    config : CNNConfig
        ``input_length`` is replaced by the preprocessed length.
    steps : transformers, e.g. ``[WavelengthRange(...), ExtendedMultiplicativeScatterCorrection()]``
        Fitted here on the un-augmented training spectra (cloned first) unless ``fitted_steps``.
    augmenter : SpectralAugmenter, optional
        Fitted here on the training spectra after the leading wavelength selection, then its
        copies (plus the originals) go through the remaining steps: augment, then EMSC.
    train : TrainConfig
    fitted_steps : bool
        ``steps`` are already fitted (e.g. shared by the members of an ensemble).
    on_epoch : callable, optional
        Called with each epoch's history record.
    progress : TrainingProgress, optional
        Shared display (an ensemble's); by default one of its own when ``train.progress``.

    Returns
    -------
    FittedCNN
    """
    train = train or TrainConfig()
    X_train, y_train = check_xy(X_train, y_train, "fit_cnn training data")
    X_val, y_val = check_xy(X_val, y_val, "fit_cnn validation data")
    if X_val.shape[1] != X_train.shape[1]:
        raise DataError(
            f"fit_cnn: validation spectra have {X_val.shape[1]} points, "
            f"expected {X_train.shape[1]} like the training spectra"
        )
    if float(np.std(y_train)) == 0.0:
        raise DataError("fit_cnn: the training target is constant")
    device = resolve_device(train.device)
    if train.num_threads is not None:
        torch.set_num_threads(train.num_threads)
    started = time.perf_counter()
    steps = list(steps) if fitted_steps else [clone(s) for s in steps]
    Z, y_fit = _training_inputs(X_train, y_train, steps, augmenter, fitted_steps)
    V = apply_steps(steps, X_val)
    model, history, best_epoch = _train_network(
        Z, y_fit, V, y_val, config, train, device, on_epoch, progress
    )
    predictor = CNNPredictor([model.cpu()], device=train.device)
    return FittedCNN(
        steps=steps,
        predictor=predictor,
        history=[history],
        best_epochs=[best_epoch],
        train_seconds=time.perf_counter() - started,
    )


def _training_inputs(
    X: np.ndarray,
    y: np.ndarray,
    steps: list[Any],
    augmenter: SpectralAugmenter | None,
    fitted_steps: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The network's training inputs: wavelength selection, augmentation, the other steps.

    The steps are fitted here on the un-augmented spectra unless ``fitted_steps``.
    """
    select, rest = split_augmentation_steps(steps)
    Z = X
    for step in select:
        Z = step.transform(Z) if fitted_steps else step.fit_transform(Z)
    Z_fit = Z
    if not fitted_steps:
        for step in rest:
            Z_fit = step.fit_transform(Z_fit)
    if augmenter is None:
        return apply_steps(rest, Z), y
    aug = clone(augmenter).fit(Z)
    Z, y_fit = aug.augment(Z, y, include_original=True)
    assert y_fit is not None
    return apply_steps(rest, Z), y_fit


def _train_network(
    Z: np.ndarray,
    y_fit: np.ndarray,
    V: np.ndarray,
    y_val: np.ndarray,
    config: CNNConfig,
    train: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[dict[str, float]], None] | None,
    progress: TrainingProgress | None,
) -> tuple[SpectralCNN, list[dict[str, float]], int]:
    """A seeded network trained on ``Z`` with early stopping on ``V``; its history, best epoch."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(train.deterministic)
    try:
        torch.manual_seed(train.seed)
        model = SpectralCNN(config.with_input_length(Z.shape[1]))
        model.set_scaling(Z, y_fit)
        model.to(device)
        xt = torch.as_tensor(Z, dtype=torch.float32, device=device)
        yt = (torch.as_tensor(y_fit, dtype=torch.float32, device=device) - model.y_mean) / (
            model.y_scale
        )
        xv = torch.as_tensor(V, dtype=torch.float32, device=device)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay
        )
        steps_per_epoch = -(-xt.shape[0] // train.batch_size)
        scheduler, per_batch = make_scheduler(optimizer, train, steps_per_epoch)
        generator = torch.Generator().manual_seed(train.seed)
        shown: contextlib.AbstractContextManager[TrainingProgress]
        if progress is None:  # one network on its own: a display of its own
            shown = TrainingProgress(1, train.epochs, enabled=train.progress)
        else:
            shown = contextlib.nullcontext(progress)
        with shown as bar:
            if progress is None:
                bar.start_member(0)
            history, best_state, _, best_epoch = _loop(
                model, optimizer, scheduler, per_batch, xt, yt, xv, y_val, train, generator,
                on_epoch, bar,
            )  # fmt: skip
        if train.restore_best:
            model.load_state_dict(best_state)
        else:
            best_epoch = len(history) - 1
    finally:
        torch.use_deterministic_algorithms(prev_det)
    return model, history, best_epoch


def _loop(
    model: SpectralCNN,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    per_batch: bool,
    xt: torch.Tensor,
    yt: torch.Tensor,
    xv: torch.Tensor,
    y_val: np.ndarray,
    train: TrainConfig,
    generator: torch.Generator,
    on_epoch: Callable[[dict[str, float]], None] | None,
    progress: TrainingProgress,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], float, int]:
    """Epochs with early stopping; returns history, best weights, best RMSE and epoch."""
    history: list[dict[str, float]] = []
    best_rmse, best_epoch = np.inf, -1
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(train.epochs):
        t0 = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        loss = train_one_epoch(
            model,
            optimizer,
            xt,
            yt,
            train.batch_size,
            generator,
            scheduler if per_batch else None,
            mixup=train.mixup,
            mixup_extend=train.mixup_extend,
            shift_points=train.shift_points,
        )
        rmse, _ = evaluate(model, xv, y_val)
        if not np.isfinite(loss):
            raise ModelError(f"training diverged at epoch {epoch} (loss {loss})")
        if scheduler is not None and not per_batch:
            scheduler.step(rmse)
        record = {
            "epoch": float(epoch),
            "train_loss": loss,
            "val_rmse": rmse,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        progress.epoch(record)
        if rmse < best_rmse:
            best_rmse, best_epoch = rmse, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif train.restore_best and epoch - best_epoch >= train.patience:
            break
    progress.end_member(best_epoch, float(best_rmse))
    return history, best_state, float(best_rmse), best_epoch
