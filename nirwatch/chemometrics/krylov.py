"""Batched PLS1 cross-validation from Gram matrices (the engine of :class:`~nirwatch.
chemometrics.pls_search.PLSCalibrationCV`).

PLS1 with ``a`` components fits ``y`` by least squares within the Krylov space
``span{K y, K^2 y, ..., K^a y}`` of the centred Gram matrix ``K = X X'`` (Helland 1988,
Commun. Statist. Simul. 17, 581-607). Every fold's ``K`` is a double-centred block of one Gram
matrix of the preprocessed spectra, so a recipe costs one ``n x n`` Gram product plus a batched
Lanczos iteration over all folds at once (n x n per fold, not n x p), and the predictions of
every number of components come out of one triangular solve (the leading block of an upper
triangular inverse is the inverse of the leading block).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import KFold

from nirwatch.errors import DataError, ModelError

__all__ = ["FoldIndex", "cv_splits", "fold_kernels", "krylov_pls_predictions", "sample_labels"]


def sample_labels(groups: Any) -> np.ndarray:
    """Each spectrum's sample as an int 0..G-1 (replicate scans share one), from any labels."""
    return np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)


def cv_splits(
    n: int, folds: int, repeats: int, seed: int, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated shuffled K-fold splits (train, test) by sample.

    With ``groups`` (n,), spectra sharing a value (replicate scans of one sample) always fall
    in the same fold: the groups are shuffled and dealt to the folds, so held-out spectra are
    never predicted from their own replicates.
    """
    if groups is None:
        if not 2 <= folds <= n:
            raise DataError(f"cv: need 2 <= folds <= {n} spectra, got {folds}")
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for r in range(repeats):
            kf = KFold(n_splits=folds, shuffle=True, random_state=seed + 7919 * r)
            out.extend(kf.split(np.empty((n, 1))))
        return out
    labels = sample_labels(groups)
    if labels.size != n:
        raise DataError(f"cv: expected {n} group labels, got {labels.size}")
    g = int(labels.max()) + 1
    if not 2 <= folds <= g:
        raise DataError(f"cv: need 2 <= folds <= {g} groups (samples), got {folds}")
    out = []
    rows = np.arange(n)
    for r in range(repeats):
        fold_of_group = np.empty(g, dtype=np.int64)
        fold_of_group[np.random.default_rng(seed + 7919 * r).permutation(g)] = np.arange(g) % folds
        fold = fold_of_group[labels]
        out.extend((rows[fold != k], rows[fold == k]) for k in range(folds))
    return out


class FoldIndex:
    """Padded train/test index arrays for a list of splits (vectorised gathers)."""

    def __init__(self, splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.n_folds = len(splits)
        self.n_train = np.array([len(tr) for tr, _ in splits])
        self.n_test = np.array([len(te) for _, te in splits])
        N, M = int(self.n_train.max()), int(self.n_test.max())
        self.train = np.zeros((self.n_folds, N), dtype=np.int64)
        self.test = np.zeros((self.n_folds, M), dtype=np.int64)
        self.train_mask = np.zeros((self.n_folds, N), dtype=bool)
        self.test_mask = np.zeros((self.n_folds, M), dtype=bool)
        for f, (tr, te) in enumerate(splits):
            self.train[f, : len(tr)] = tr
            self.test[f, : len(te)] = te
            self.train_mask[f, : len(tr)] = True
            self.test_mask[f, : len(te)] = True


def fold_kernels(
    G: np.ndarray, y: np.ndarray, idx: FoldIndex
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per fold: centred train kernel (F,N,N), test kernel (F,M,N), centred y (F,N), y mean (F,).

    Padded rows and columns are zero, so they add nothing to any product below.
    """
    wtr = idx.train_mask.astype(np.float64) / idx.n_train[:, None]
    F, N, M = idx.n_folds, idx.train.shape[1], idx.test.shape[1]
    Ktt = np.zeros((F, N, N))
    Kst = np.zeros((F, M, N))
    for f in range(F):  # per-fold blocks: np.ix_ gathers are far faster than 3-D fancy indexing
        tr, te = idx.train[f, : idx.n_train[f]], idx.test[f, : idx.n_test[f]]
        Ktt[f, : tr.size, : tr.size] = G[np.ix_(tr, tr)]
        Kst[f, : te.size, : tr.size] = G[np.ix_(te, tr)]
    col = (Ktt @ wtr[:, :, None])[:, :, 0]  # z_i . m for train rows
    tot = np.einsum("fi,fi->f", col, wtr)  # m . m
    K = Ktt - col[:, :, None] - col[:, None, :] + tot[:, None, None]
    row = (Kst @ wtr[:, :, None])[:, :, 0]  # z*_i . m
    Ks = Kst - row[:, :, None] - col[:, None, :] + tot[:, None, None]
    tm, sm = idx.train_mask, idx.test_mask
    K *= tm[:, :, None] & tm[:, None, :]
    Ks *= sm[:, :, None] & tm[:, None, :]
    ytr = y[idx.train]
    ymean = (ytr * wtr).sum(axis=1)
    yc = (ytr - ymean[:, None]) * tm
    return K, Ks, yc, ymean


def krylov_pls_predictions(
    K: np.ndarray, Ks: np.ndarray, yc: np.ndarray, n_components: int
) -> tuple[np.ndarray, int]:
    """PLS1 predictions for 1..A components from centred kernels, batched over folds.

    Parameters
    ----------
    K : (F, N, N) centred training Gram matrices (zero-padded)
    Ks : (F, M, N) centred test-by-train kernels
    yc : (F, N) centred training targets
    n_components : int, A

    Returns
    -------
    pred : ndarray (F, M, A')
        Centred predictions (add the training mean) for 1..A' components.
    A' : int
        Components computed: fewer than A when the Krylov space is exhausted in some fold.
    """
    F, N, _ = K.shape
    A = int(n_components)
    Q = np.zeros((F, A, N))  # basis vectors as rows: contiguous writes and BLAS products
    norm_y = np.linalg.norm(yc, axis=1)
    if np.any(norm_y == 0):
        raise DataError("PLS: a training fold has a constant target")
    q = yc / norm_y[:, None]
    scale = np.linalg.norm(K, axis=(1, 2)) + 1e-300
    done = A
    for a in range(A):
        Q[:, a] = q
        if a == A - 1:
            break
        v = (K @ q[:, :, None])[:, :, 0]
        basis = Q[:, : a + 1]
        for _ in range(2):  # full re-orthogonalisation, twice (Lanczos loses orthogonality)
            v -= (basis.transpose(0, 2, 1) @ (basis @ v[:, :, None]))[:, :, 0]
        nv = np.linalg.norm(v, axis=1)
        if np.any(nv <= 1e-10 * scale):
            done = a + 1  # the Krylov space is exhausted (rank of the fold's data)
            break
        q = v / nv[:, None]
    Q = Q[:, :done].transpose(0, 2, 1)
    M = K @ Q  # (F, N, A'): the fitted-value directions
    G, H = np.linalg.qr(M)
    c = np.einsum("fia,fi->fa", G, yc)
    diag = np.abs(np.diagonal(H, axis1=1, axis2=2))
    # Components whose direction adds nothing new (numerical rank) end the path.
    tiny = diag <= 1e-10 * diag.max(axis=1, keepdims=True)
    if tiny.any():
        done = int(np.argmax(tiny.any(axis=0)))
        if done == 0:
            raise ModelError("PLS: no usable latent variable (the spectra carry no variance)")
        Q, H, c = Q[:, :, :done], H[:, :done, :done], c[:, :done]
    eye = np.broadcast_to(np.eye(done), H.shape)
    Hinv = np.linalg.solve(H, eye)
    R = Q @ Hinv  # (F, N, A'): sample-space rotations
    scores = Ks @ R  # (F, M, A')
    return np.cumsum(scores * c[:, None, :], axis=2), done
