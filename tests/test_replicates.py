"""Replicate scans of one sample stay in one cross-validation fold (issue "calibrations that
hold on the user's own data": folds by sample): the splits, the searches, the outer folds, the
range-end check and `nirwatch train --group-column`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nirwatch.apps.cli import main
from nirwatch.chemometrics.krylov import cv_splits
from nirwatch.chemometrics.pls_search import PLSCalibrationCV
from nirwatch.chemometrics.recipes import Recipe
from nirwatch.errors import DataError
from training.calibration import range_end_split
from training.candidates import validation_split
from training.cnn_ensemble import stratified_folds
from training.fit import check_groups

P = 60
WL = np.linspace(1100.0, 1690.0, P)
SIGMA_LAB = 0.5


def replicated(n_samples: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sample scanned ``reps`` times: one content band, a sample-specific matrix spectrum
    (unrelated to the content) and a lab reference with error SIGMA_LAB per sample. Only a model
    that has seen a sample's replicates can "predict" its lab error, through its matrix."""
    rng = np.random.default_rng(seed)
    axis = np.arange(P)
    content = rng.uniform(0.0, 10.0, n_samples)
    y_lab = content + rng.normal(0.0, SIGMA_LAB, n_samples)
    basis = np.random.default_rng(99).normal(size=(20, P))  # the product's matrix variation
    matrix = rng.normal(size=(n_samples, 20)) @ basis * 0.3
    pure = np.outer(content, np.exp(-0.5 * ((axis - 25) / 5) ** 2)) + matrix + 1.0
    X = np.repeat(pure, reps, axis=0) + rng.normal(0.0, 0.002, (n_samples * reps, P))
    groups = np.repeat(np.arange(n_samples), reps)
    return X, np.repeat(y_lab, reps), groups


def test_group_splits_never_separate_a_samples_replicates() -> None:
    groups = np.repeat(np.arange(13), 3)
    splits = cv_splits(groups.size, 5, 2, seed=0, groups=groups)
    assert len(splits) == 10
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test]) and test.size
    tested = np.concatenate([test for _, test in splits[:5]])
    assert sorted(tested.tolist()) == list(range(groups.size))  # each spectrum once a repeat
    with pytest.raises(DataError, match="need 2 <= folds <= 13 groups"):
        cv_splits(groups.size, 14, 1, seed=0, groups=groups)


def test_outer_folds_range_ends_and_validation_keep_replicates_together() -> None:
    y = np.repeat(np.linspace(0.0, 10.0, 20), 3) + np.tile([0.0, 0.01, -0.01], 20)
    groups = np.repeat(np.arange(20), 3)
    folds = stratified_folds(y, 5, seed=1, groups=groups)
    assert all(np.unique(folds[groups == g]).size == 1 for g in range(20))
    assert np.bincount(folds).tolist() == [12] * 5  # 4 samples of 3 scans per fold
    mid, ends = range_end_split(y, 0.1, groups)
    assert sorted(set(groups[ends])) == [0, 1, 18, 19] and not (mid & ends).any()
    val, tr = validation_split(y.size, 0.2, 0, groups)
    assert not set(groups[val]) & set(groups[tr]) and val.size == 12


def test_row_wise_cv_flatters_replicates_and_grouped_cv_does_not() -> None:
    X, y, groups = replicated(20, 5, seed=2)
    X_new, y_new, _ = replicated(400, 1, seed=3)
    kw = {"recipes": [Recipe(None, None, "none")], "max_components": 30, "cv": 5, "repeats": 1}
    rows = PLSCalibrationCV(WL, **kw).fit(X, y)
    grouped = PLSCalibrationCV(WL, **kw).fit(X, y, groups)
    true = float(np.sqrt(np.mean((grouped.predict(X_new) - y_new) ** 2)))
    # Row-wise, held-out scans are predicted from their own replicates: the lab error of
    # each sample is "learnt" through its matrix and the RMSECV falls below the lab error.
    assert rows.rmsecv_ < 0.6 * SIGMA_LAB, rows.rmsecv_
    assert rows.n_components_ > grouped.n_components_
    # Grouped, the RMSECV is what new samples see.
    assert grouped.rmsecv_ > SIGMA_LAB and 0.7 < grouped.rmsecv_ / true < 1.4, (
        grouped.rmsecv_,
        true,
    )


def test_sample_labels_are_checked_by_name() -> None:
    assert check_groups(None, 5) is None
    with pytest.raises(DataError, match=r"one sample label per spectrum, shape \(5,\), got \(4,\)"):
        check_groups(["a", "b", "c", "d"], 5)
    with pytest.raises(DataError, match=r"sample label missing in 1 rows, rows \[2\]"):
        check_groups(["a", "b", "", "c", "c"], 5)
    with pytest.raises(DataError, match="at least 3 samples needed for cross-validation, got 2"):
        check_groups(["a", "a", "b", "b", "b"], 5)


def test_train_group_column_records_the_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    X, y, groups = replicated(30, 3, seed=4)
    path = tmp_path / "reps.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["SampleID", "api", *[f"{v:g}" for v in WL]])
        for g, yv, x in zip(groups, y, X, strict=True):
            w.writerow([f"S{g:03d}", repr(float(yv)), *map(repr, x.tolist())])
    out = tmp_path / "b"
    args = ["train", "--data", str(path), "--target", "api", "--model", "pls", "--out"]
    assert main([*args, str(out), "--group-column", "SampleID"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["cv_groups"] == 30
    assert main([*args, str(tmp_path / "c"), "--group-column", "Sample"]) != 0
    assert "no group column 'Sample'; available: ['SampleID', 'api']" in capsys.readouterr().err
