"""A K-fold ensemble of :class:`~nirwatch.chemometrics.cnn.SpectralCNN` (the shipped CNN).

:func:`fit_cnn_ensemble` trains one network per fold of a stratified K-fold split of the
calibration data, each early-stopped on its own held-out fold, and averages them: the held-out
predictions give an honest RMSECV for free, and averaging reduces the variance that training a
network on ~200 spectra has from seed to seed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.base import clone

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.cnn import CNNConfig, CNNPredictor, SpectralCNN
from nirwatch.chemometrics.krylov import sample_labels
from nirwatch.errors import DataError
from training.cnn import FittedCNN, TrainConfig, check_xy, fit_cnn
from training.cnn_progress import TrainingProgress

__all__ = ["fit_cnn_ensemble", "stratified_folds"]


def stratified_folds(y: Any, n_folds: int, seed: int = 0, groups: Any = None) -> np.ndarray:
    """Fold index (n,) for a K-fold split stratified on the sorted target.

    Consecutive blocks of ``n_folds`` spectra in target order are spread over the folds at
    random, so every fold spans the whole concentration range (each validation fold then
    tests interpolation over the full range, as the test set will). With ``groups`` (n,), the
    samples (spectra sharing a value: replicate scans) are dealt to the folds by their mean
    target, so a sample's replicates share one fold.
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    if groups is not None:
        labels = sample_labels(groups)
        if labels.shape != y.shape:
            raise DataError(f"groups: expected shape {y.shape}, got {labels.shape}")
        means = np.bincount(labels, weights=y) / np.bincount(labels)
        return stratified_folds(means, n_folds, seed)[labels]
    if not 2 <= n_folds <= y.shape[0]:
        raise DataError(f"n_folds: need 2 <= folds <= {y.shape[0]}, got {n_folds}")
    rng = np.random.default_rng(seed)
    order = np.argsort(y, kind="stable")
    folds = np.empty(y.shape[0], dtype=np.int64)
    for start in range(0, y.shape[0], n_folds):
        block = order[start : start + n_folds]
        folds[block] = rng.permutation(n_folds)[: block.shape[0]]
    return folds


def fit_cnn_ensemble(
    X: Any,
    y: Any,
    config: CNNConfig,
    *,
    steps: Sequence[Any] = (),
    augmenter: SpectralAugmenter | None = None,
    train: TrainConfig | None = None,
    n_members: int = 5,
    folds: np.ndarray | None = None,
) -> FittedCNN:
    """One network per fold of a stratified K-fold split, each early-stopped on its fold.

    The preprocessing (unsupervised: no target involved) is fitted once on all calibration
    spectra and shared by the members; the augmenter is seeded differently per member.

    ``folds`` (n,) gives the split (members = folds) instead of :func:`stratified_folds`, e.g.
    to share the outer folds of a nested model comparison.

    Returns
    -------
    FittedCNN
        With the members' mean as predictor and ``oof_pred`` (n,): each calibration
        spectrum predicted by the member that did not train on it.
    """
    train = train or TrainConfig()
    X, y = check_xy(X, y, "fit_cnn_ensemble")
    started = time.perf_counter()
    fitted = [clone(s) for s in steps]
    Z = X
    for step in fitted:
        Z = step.fit_transform(Z)
    if folds is None:
        folds = stratified_folds(y, n_members, seed=train.seed)
    elif np.shape(folds) != y.shape:
        raise DataError(f"folds: expected shape {y.shape}, got {np.shape(folds)}")
    else:
        n_members = int(np.max(folds)) + 1
    members: list[SpectralCNN] = []
    history: list[list[dict[str, float]]] = []
    best_epochs: list[int] = []
    oof = np.empty_like(y)
    # One display for all members ("member k/5"), not one transient bar per member.
    with TrainingProgress(n_members, train.epochs, enabled=train.progress) as progress:
        for k in range(n_members):
            progress.start_member(k)
            tr, va = folds != k, folds == k
            member_train = replace(train, seed=train.seed * 1000 + k)
            member_aug = None
            if augmenter is not None:
                base = augmenter.random_state or 0
                member_aug = clone(augmenter).set_params(random_state=base * 1000 + k)
            fit = fit_cnn(
                X[tr],
                y[tr],
                X[va],
                y[va],
                config,
                steps=fitted,
                augmenter=member_aug,
                train=member_train,
                fitted_steps=True,
                progress=progress,
            )
            oof[va] = fit.predict(X[va])
            members.extend(fit.predictor.members)
            history.extend(fit.history)
            best_epochs.extend(fit.best_epochs)
    return FittedCNN(
        steps=fitted,
        predictor=CNNPredictor(members, device=train.device),
        history=history,
        best_epochs=best_epochs,
        train_seconds=time.perf_counter() - started,
        oof_pred=oof,
    )
