"""``nirwatch train`` / ``nirwatch predict`` on a small slice of the IDRC 2002 shootout data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nirwatch.apps.cli import main
from nirwatch.io.datasets import load_spectra
from nirwatch.models.bundle import load_bundle
from nirwatch.models.registry import ModelRegistry


def write_slice(src: Path, dest: Path, n_train: int = 60, n_test: int = 30) -> Path:
    """The first ``n_train`` Train and ``n_test`` Test tablets of instrument 1."""
    with src.open() as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    train = [r for r in body if r[0] == "Train"][:n_train]
    test = [r for r in body if r[0] == "Test"][:n_test]
    with dest.open("w", newline="") as f:
        csv.writer(f).writerows([header, *train, *test])
    return dest


@pytest.fixture(autouse=True)
def _one_cv_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    # The recipe search repeats K-fold up to 5 times on small sets; once is enough to test the
    # plumbing and keeps these tests quick.
    monkeypatch.setenv("NIRWATCH_TRAIN_CV_REPEATS", "1")


@pytest.fixture
def shootout_slice(shootout_csv: Path, tmp_path: Path) -> Path:
    return write_slice(shootout_csv, tmp_path / "slice.csv")


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--target",
        "assay",
        "--unit",
        "mg",
        "--out",
        str(out),
        *extra,
    ]


def test_train_pls_register_and_predict(
    shootout_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, reg = tmp_path / "bundle", tmp_path / "registry"
    split = ["--split-column", "SampleType", "--train-values", "Train"]
    rc = main(train_args(shootout_slice, out, *split, "--model", "pls", "--registry", str(reg)))
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "report/report.json").read_text())
    pls = report["models"]["pls"]
    assert report["n_calibration"] == 60 and report["n_test"] == 30
    assert 1 <= pls["n_components"] <= 20
    # The slice is small; a PLS of MSC + 1st derivative still predicts assay (mg) to a few mg.
    assert 1.0 < pls["rmsecv"] < 10.0 and 1.0 < pls["rmsep"] < 10.0 and pls["cv_r2"] > 0.8
    for png in ("predicted_vs_reference.png", "residuals.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [info] = ModelRegistry(reg).list()
    assert info.status == "candidate" and info.metrics["rmsep"] == pytest.approx(pls["rmsep"])

    preds = tmp_path / "preds.csv"
    rc = main(["predict", "--bundle", str(out), "--data", str(shootout_slice), "--out", str(preds)])
    assert rc == 0, capsys.readouterr().err
    with preds.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 90
    assert {"prediction", "model", "cnn_prediction", "pls_prediction", "t2", "q"} <= set(rows[0])
    low = np.array([float(r["interval_low"]) for r in rows])
    high = np.array([float(r["interval_high"]) for r in rows])
    value = np.array([float(r["prediction"]) for r in rows])
    assert np.all((low < value) & (value < high))
    assert all(r["model"] == "pls" and r["fallback_reason"] == "cnn_unavailable" for r in rows)
    assert all(r["out_of_model"] in ("true", "false") for r in rows)
    # The calibrated range is the Train rows' reference range; beyond it a value is held.
    calibrated = load_spectra(
        shootout_slice, target="assay", split_column="SampleType", split_values={"Train"}
    )
    assert calibrated.y is not None
    lo, hi = float(calibrated.y.min()), float(calibrated.y.max())
    assert load_bundle(out).target_range == (lo, hi)
    values = np.array([float(r["prediction"]) for r in rows])
    outside = [r["outside_range"] == "true" for r in rows]
    assert outside == ((values < lo) | (values > hi)).tolist()
    data = load_spectra(shootout_slice, target="assay")
    expected = load_bundle(out).predict(data.X).value
    np.testing.assert_allclose([float(r["prediction"]) for r in rows], expected, rtol=1e-8)
    assert data.y is not None
    test_rmse = np.sqrt(np.mean((expected[60:] - data.y[60:]) ** 2))
    assert test_rmse == pytest.approx(pls["rmsep"], rel=1e-7)


def test_bad_training_data_gives_clear_cli_errors(
    shootout_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(args: list[str], *needles: str) -> None:
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "nirwatch train: error:" in err
        for needle in needles:
            assert needle in err, err
        assert "Traceback" not in err

    out = tmp_path / "b"
    fails(train_args(shootout_slice, out, "--target", "nope"), "no target column 'nope'")
    fails(
        train_args(shootout_slice, out, "--split-column", "Batch", "--train-values", "x"),
        "Batch",
    )
    fails(
        train_args(shootout_slice, out, "--split-column", "SampleType", "--train-values", "Nope"),
        "Nope",
    )
    small = write_slice(shootout_slice, tmp_path / "small.csv", n_train=8, n_test=0)
    fails(train_args(small, out, "--model", "pls"), "too few samples", "8 spectra")

    rows = list(csv.reader(shootout_slice.open()))
    rows[5][10] = "nan"
    nan_csv = tmp_path / "nan.csv"
    csv.writer(nan_csv.open("w", newline="")).writerows(rows)
    fails(train_args(nan_csv, out), "non-finite", "lines [6]")

    rows = list(csv.reader(shootout_slice.open()))
    for r in rows[1:]:
        r[3] = "200"
    const_csv = tmp_path / "const.csv"
    csv.writer(const_csv.open("w", newline="")).writerows(rows)
    fails(train_args(const_csv, out), "constant")
    assert not out.exists()


def test_predict_refuses_other_grid(
    shootout_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    assert main(train_args(shootout_slice, out, "--model", "pls")) == 0
    rows = [r[:-10] for r in csv.reader(shootout_slice.open())]  # drop the last 10 wavelengths
    short = tmp_path / "short.csv"
    csv.writer(short.open("w", newline="")).writerows(rows)
    capsys.readouterr()
    args = ["predict", "--bundle", str(out), "--data", str(short), "--out", str(tmp_path / "p.csv")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "differs from the bundle's lin:600:1898:2 (650 points)" in err
    assert not (tmp_path / "p.csv").exists()


FALLBACK_REASONS = {"", "cnn_pls_disagree", "cnn_non_finite", "cnn_error", "range_end"}


def test_train_tiny_cnn_and_predict(
    shootout_slice: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A tiny CNN (2 networks, 3 epochs, 2 augmented copies): the plumbing, not the accuracy.
    # 60 spectra are below cnn_min_samples: --model cnn trains and serves it regardless.
    monkeypatch.setenv("NIRWATCH_TRAIN_CNN_MEMBERS", "2")
    monkeypatch.setenv("NIRWATCH_TRAIN_AUGMENT_COPIES", "2")
    monkeypatch.setenv("NIRWATCH_TRAIN_CNN_START_NM", "1100")  # as benchmarks/shootout.py
    out = tmp_path / "bundle"
    split = ["--split-column", "SampleType", "--train-values", "Train"]
    rc = main(
        train_args(
            shootout_slice, out, *split, "--epochs", "3", "--device", "cpu", "--model", "cnn"
        )
    )
    assert rc == 0, capsys.readouterr().err
    assert (out / "cnn.safetensors").exists() and (out / "cnn.json").exists()
    report = json.loads((out / "report/report.json").read_text())
    assert set(report["models"]) == {"pls", "cnn", "served"} and report["served_by"] == "cnn"
    assert report["selection"]["reason"] == "--model cnn: the CNN serves as asked"
    cnn = report["models"]["cnn"]
    assert cnn["members"] == 2 and cnn["n_cv"] == 60 and cnn["n_test"] == 30
    for png in ("learning_curves.png", "conv1_kernel_activations.png"):
        assert (out / "report" / png).read_bytes()[:4] == b"\x89PNG"
    assert report["settings"]["epochs"] == 3
    steps = json.loads((out / "preprocessing.json").read_text())["pipelines"]["cnn"]["steps"]
    assert [st["class"] for st in steps] == [
        "WavelengthRange",
        "ExtendedMultiplicativeScatterCorrection",
    ]

    preds = tmp_path / "preds.csv"
    args = ["predict", "--bundle", str(out), "--data", str(shootout_slice), "--out", str(preds)]
    assert main([*args, "--device", "cpu", "--id-column", "SampleType"]) == 0
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 90 and rows[0]["SampleType"] == "Train" and rows[-1]["SampleType"] == "Test"
    assert all(r["cnn_prediction"] != "" for r in rows)
    assert all(r["fallback_reason"] in FALLBACK_REASONS for r in rows)
    assert all((r["model"] == "cnn") == (r["fallback_reason"] == "") for r in rows)
    # The loaded CNN predicts the test rows exactly as the in-memory one did at training time.
    data = load_spectra(shootout_slice, target="assay")
    assert data.y is not None
    cnn_test = np.array([float(r["cnn_prediction"]) for r in rows[60:]])
    rmsep = float(np.sqrt(np.mean((cnn_test - data.y[60:]) ** 2)))
    assert rmsep == pytest.approx(cnn["rmsep"], rel=1e-7)

    import torch

    if not torch.cuda.is_available():  # CUDA asked for but absent: PLS serves, visibly
        on_cuda = load_bundle(out, device="cuda")
        assert not on_cuda.has_cnn and "CUDA" in str(on_cuda.cnn_load_error)
        assert on_cuda.predict(data.X[:2]).fallback_reason == ["cnn_unavailable"] * 2


def test_train_and_predict_npz(
    shootout_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = load_spectra(shootout_slice, target="assay")
    assert data.y is not None
    npz = tmp_path / "slice.npz"
    np.savez(
        npz,
        X=data.X,
        wavelengths=data.wavelengths,
        assay=data.y,
        SampleType=data.metadata["SampleType"].astype(str),
    )
    out = tmp_path / "b"
    split = ["--split-column", "SampleType", "--train-values", "Train"]
    assert main(train_args(npz, out, *split, "--model", "pls")) == 0, capsys.readouterr().err
    preds = tmp_path / "p.csv"
    assert main(["predict", "--bundle", str(out), "--data", str(npz), "--out", str(preds)]) == 0
    assert len(list(csv.DictReader(preds.open()))) == 90
    # The same data as CSV gives the same model: the bundle records the same data hash.
    out_csv = tmp_path / "c"
    assert main(train_args(shootout_slice, out_csv, *split, "--model", "pls")) == 0
    m_npz = json.loads((out / "manifest.json").read_text())
    m_csv = json.loads((out_csv / "manifest.json").read_text())
    assert m_npz["data_hash"] == m_csv["data_hash"]
    assert m_npz["files"]["pls.npz"] == m_csv["files"]["pls.npz"]


def test_signed_bundle_with_registry_key(
    shootout_slice: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NIRWATCH_REGISTRY_HMAC_KEY", "k1")
    out, reg = tmp_path / "b", tmp_path / "reg"
    assert main(train_args(shootout_slice, out, "--model", "pls", "--registry", str(reg))) == 0
    assert (out / "manifest.sig").read_text().startswith("hmac-sha256:")
    preds = tmp_path / "p.csv"
    args = ["predict", "--bundle", str(out), "--data", str(shootout_slice), "--out", str(preds)]
    assert main(args) == 0
    capsys.readouterr()
    monkeypatch.setenv("NIRWATCH_REGISTRY_HMAC_KEY", "k2")
    assert main(args) == 1
    assert "HMAC signature does not match" in capsys.readouterr().err
    assert main(["models", "list", "--registry", str(reg)]) == 0
    [version] = [i.version for i in ModelRegistry(reg).list()]
    assert main(["models", "promote", version, "--registry", str(reg)]) == 1
    assert "refusing to promote" in capsys.readouterr().err


def test_a_wavenumber_file_with_gaps_trains_the_same_model_as_the_clean_one(
    shootout_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A decreasing axis is turned round; rows without a reference value are left out, by
    name: the bundle is the one trained on the clean, increasing file without those rows."""
    with shootout_slice.open() as f:
        header, *body = list(csv.reader(f))
    first = next(i for i, h in enumerate(header) if h.replace(".", "").isdigit())
    col = header.index("assay")
    gaps = [1, 4]  # Train rows: lines 3 and 6 of the file
    flipped, clean = tmp_path / "flipped.csv", tmp_path / "clean.csv"
    with flipped.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header[:first] + header[first:][::-1])
        for i, r in enumerate(body):
            row = [("" if i in gaps and j == col else c) for j, c in enumerate(r)]
            w.writerow(row[:first] + row[first:][::-1])
    with clean.open("w", newline="") as f:
        csv.writer(f).writerows([header, *(r for i, r in enumerate(body) if i not in gaps)])
    split = ["--split-column", "SampleType", "--train-values", "Train", "--model", "pls"]
    assert main(train_args(flipped, tmp_path / "f", *split)) == 0
    assert "left out 2 rows, lines [3, 6]: no assay value" in capsys.readouterr().err
    assert main(train_args(clean, tmp_path / "c", *split)) == 0
    m_f = json.loads((tmp_path / "f" / "manifest.json").read_text())
    m_c = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m_f["data_hash"] == m_c["data_hash"] and m_f["grid"] == m_c["grid"]
    assert m_f["files"]["pls.npz"] == m_c["files"]["pls.npz"]
