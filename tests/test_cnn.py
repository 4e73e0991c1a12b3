"""The 1-D CNN, its inference wrapper and its training loop, on small synthetic spectra."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from builders import FAST, SMALL, synthetic
from safetensors.numpy import load_file, save_file

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.cnn import (
    DEFAULT_CHUNK_SIZE,
    CNNConfig,
    CNNPredictor,
    SpectralCNN,
    resolve_device,
)
from nirwatch.chemometrics.scatter import ExtendedMultiplicativeScatterCorrection
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.errors import DataError, ModelError
from training.cnn import (
    FittedCNN,
    TrainConfig,
    augment_batch,
    fit_cnn,
)
from training.cnn_ensemble import fit_cnn_ensemble, stratified_folds

# ---------------------------------------------------------------- model and config


@pytest.mark.parametrize("linear_skip", [True, False])
def test_forward_shapes_and_units(linear_skip: bool) -> None:
    cfg = CNNConfig.from_dict({**SMALL.to_dict(), "linear_skip": linear_skip})
    net = SpectralCNN(cfg.with_input_length(80))
    assert ("skip.weight" in net.state_dict()) is linear_skip
    x = torch.randn(7, 80)
    assert net(x).shape == (7,)
    assert net(x.unsqueeze(1)).shape == (7,)
    acts = net.first_layer_activations(x)
    assert acts.shape == (7, 4, 80 - 9 + 1)
    X = np.random.default_rng(0).normal(size=(20, 80))
    y = np.linspace(150, 250, 20)
    net.set_scaling(X, y)
    net.eval()
    with torch.no_grad():
        out = net(torch.as_tensor(X, dtype=torch.float32))
        units = net.predict_units(torch.as_tensor(X, dtype=torch.float32))
    assert torch.allclose(units, out * float(y.std()) + float(y.mean()))


def test_forward_rejects_wrong_length() -> None:
    net = SpectralCNN(SMALL.with_input_length(80))
    with pytest.raises(DataError, match=r"expected input \(n, 80\).*got \(3, 81\)"):
        net(torch.randn(3, 81))


def test_config_json_round_trip_and_validation() -> None:
    cfg = CNNConfig(input_length=400, conv_filters=(8, 4), kernel_sizes=(32, 5), strides=(2, 1))
    again = CNNConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ModelError, match="one entry per conv layer"):
        CNNConfig(conv_filters=(8, 8), kernel_sizes=(32,), strides=(1,))
    with pytest.raises(ModelError, match="too short"):
        CNNConfig(input_length=20, kernel_sizes=(32,))
    with pytest.raises(ModelError, match="dropout"):
        CNNConfig(dropout=1.0)
    with pytest.raises(ModelError, match="unknown keys"):
        CNNConfig.from_dict({"filters": 3})
    with pytest.raises(ModelError, match="input_length is not set"):
        SpectralCNN(CNNConfig())


# ---------------------------------------------------------------- inference and state


def _predictor(n_members: int = 2) -> CNNPredictor:
    torch.manual_seed(0)
    members = [SpectralCNN(SMALL.with_input_length(80)) for _ in range(n_members)]
    rng = np.random.default_rng(1)
    for m in members:
        m.set_scaling(rng.normal(size=(30, 80)), rng.normal(200, 10, 30))
    return CNNPredictor(members, device="cpu", chunk_size=5)


def test_predictor_is_the_members_mean_and_chunking_does_not_matter() -> None:
    pred = _predictor()
    X = np.random.default_rng(2).normal(size=(23, 80)).astype(np.float32)
    out = pred.predict(X)
    assert out.dtype == np.float64 and out.shape == (23,)
    with torch.no_grad():
        each = [m.predict_units(torch.as_tensor(X)).double().numpy() for m in pred.members]
    np.testing.assert_allclose(out, np.mean(each, axis=0), rtol=1e-5)
    whole = CNNPredictor(pred.members, device="cpu", chunk_size=1000).predict(X)
    np.testing.assert_allclose(out, whole, rtol=1e-6)
    with pytest.raises(DataError, match=r"expected spectra of shape \(n, 80\), got \(23, 79\)"):
        pred.predict(X[:, :79])
    auto = CNNPredictor(pred.members, device="cpu")  # the device's default chunk size
    assert auto.chunk_size == DEFAULT_CHUNK_SIZE["cpu"]
    np.testing.assert_allclose(auto.predict(X), whole, rtol=1e-6)
    with pytest.raises(ModelError, match="chunk_size must be >= 1, got 0"):
        CNNPredictor(pred.members, device="cpu", chunk_size=0)


def test_state_round_trip_through_safetensors_gives_identical_predictions(tmp_path) -> None:
    pred = _predictor()
    arrays, meta = pred.to_state()
    save_file(arrays, str(tmp_path / "cnn.safetensors"))
    (tmp_path / "cnn.json").write_text(json.dumps(meta))
    again = CNNPredictor.from_state(
        load_file(str(tmp_path / "cnn.safetensors")),
        json.loads((tmp_path / "cnn.json").read_text()),
        device="cpu",
    )
    X = np.random.default_rng(3).normal(size=(11, 80))
    np.testing.assert_array_equal(pred.predict(X), again.predict(X))


def test_state_with_a_missing_tensor_is_refused() -> None:
    arrays, meta = _predictor().to_state()
    del arrays["member.1.x_mean"]
    with pytest.raises(ModelError, match="member 1 does not match"):
        CNNPredictor.from_state(arrays, meta, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the error cannot occur")
def test_cuda_without_cuda_is_a_clear_error_and_auto_picks_cpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="CUDA is not available"):
        CNNPredictor([SpectralCNN(SMALL.with_input_length(80))], device="cuda")
    with pytest.raises(ModelError, match="device must be"):
        resolve_device("tpu")


# ---------------------------------------------------------------- training


def test_training_reduces_loss_and_beats_the_mean() -> None:
    X, y, _ = synthetic(80, seed=0)
    Xv, yv, _ = synthetic(30, seed=1)
    fit = fit_cnn(X, y, Xv, yv, SMALL, train=FAST)
    history = fit.history[0]
    assert len(history) == FAST.epochs
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    rmse = float(np.sqrt(np.mean((fit.predict(Xv) - yv) ** 2)))
    assert rmse < 0.5 * float(np.std(yv))
    assert fit.best_epochs[0] == int(np.argmin([h["val_rmse"] for h in history]))


def test_determinism_switch_gives_identical_results_for_the_same_seed() -> None:
    X, y, wl = synthetic(60, seed=0)
    Xv, yv, _ = synthetic(20, seed=1)
    kw: dict[str, Any] = dict(
        steps=[WavelengthRange(wl, 1010), ExtendedMultiplicativeScatterCorrection()],
        augmenter=SpectralAugmenter(n_copies=2, noise_std=0.01, random_state=4),
    )
    det = replace(FAST, epochs=4, deterministic=True, seed=7)
    first = fit_cnn(X, y, Xv, yv, SMALL, train=det, **kw)
    second = fit_cnn(X, y, Xv, yv, SMALL, train=det, **kw)
    np.testing.assert_array_equal(first.predict(Xv), second.predict(Xv))
    assert [h["train_loss"] for h in first.history[0]] == [
        h["train_loss"] for h in second.history[0]
    ]
    other = fit_cnn(X, y, Xv, yv, SMALL, train=replace(det, seed=8), **kw)
    assert not np.array_equal(first.predict(Xv), other.predict(Xv))
    assert not torch.are_deterministic_algorithms_enabled()


def test_batch_augmentation_mixup_and_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.zeros(10), torch.ones(10)]).repeat(8, 1)
    y = torch.tensor([0.0, 1.0]).repeat(8)
    xm, ym = augment_batch(x, y, g, mixup=0.4)
    # Mixing spectra and targets with the same weights keeps target == spectrum level here.
    torch.testing.assert_close(xm.mean(dim=1), ym)
    assert float(ym.min()) >= 0.0 and float(ym.max()) <= 1.0
    xe, ye = augment_batch(x, y, torch.Generator().manual_seed(0), mixup=0.4, mixup_extend=0.5)
    torch.testing.assert_close(xe.mean(dim=1), ye)
    assert float(ye.min()) < 0.0 or float(ye.max()) > 1.0
    ramp = torch.arange(10.0).repeat(4, 1)
    xs, ys = augment_batch(ramp, torch.zeros(4), g, shift_points=2.0)
    torch.testing.assert_close(ys, torch.zeros(4))
    offsets = (ramp - xs)[:, 3:7]  # away from the held edges, a shifted ramp is a constant offset
    torch.testing.assert_close(offsets, offsets[:, :1].expand_as(offsets))
    assert float(offsets.abs().max()) <= 2.0 + 1e-6
    # Same generator state, same batch.
    a = augment_batch(x, y, torch.Generator().manual_seed(3), mixup=1.0, shift_points=1.0)
    b = augment_batch(x, y, torch.Generator().manual_seed(3), mixup=1.0, shift_points=1.0)
    torch.testing.assert_close(a, b)
    with pytest.raises(ModelError, match="mixup"):
        TrainConfig(mixup=-1.0)


def test_training_with_batch_augmentation_still_learns() -> None:
    X, y, _ = synthetic(80, seed=0)
    Xv, yv, _ = synthetic(30, seed=1)
    fit = fit_cnn(X, y, Xv, yv, SMALL, train=replace(FAST, mixup=0.4, shift_points=1.0))
    rmse = float(np.sqrt(np.mean((fit.predict(Xv) - yv) ** 2)))
    assert rmse < 0.5 * float(np.std(yv))


def test_early_stopping_restores_the_best_epoch() -> None:
    X, y, _ = synthetic(40, seed=0)
    Xv, yv, _ = synthetic(15, seed=1)
    train = replace(FAST, epochs=60, patience=3, schedule="constant")
    fit = fit_cnn(X, y, Xv, yv, SMALL, train=train)
    history = fit.history[0]
    best = fit.best_epochs[0]
    assert len(history) == best + 1 + 3 or len(history) == 60
    rmse = float(np.sqrt(np.mean((fit.predict(Xv) - yv) ** 2)))
    assert rmse == pytest.approx(history[best]["val_rmse"], rel=1e-5)


def test_fitted_cnn_state_round_trip_with_preprocessing() -> None:
    X, y, wl = synthetic(50, seed=0)
    Xv, yv, _ = synthetic(15, seed=1)
    fit = fit_cnn(
        X,
        y,
        Xv,
        yv,
        SMALL,
        steps=[WavelengthRange(wl, 1010), ExtendedMultiplicativeScatterCorrection()],
        augmenter=SpectralAugmenter(n_copies=2, random_state=0),
        train=replace(FAST, epochs=2),
    )
    arrays, meta = fit.to_state()
    again = FittedCNN.from_state(arrays, json.loads(json.dumps(meta)), device="cpu")
    np.testing.assert_array_equal(fit.predict(Xv), again.predict(Xv))
    assert again.predictor.input_length == int(np.sum(wl >= 1010))


def test_bad_training_data_is_refused() -> None:
    X, y, _ = synthetic(20, seed=0)
    with pytest.raises(DataError, match="constant"):
        fit_cnn(X, np.full(20, 3.0), X, y, SMALL, train=FAST)
    with pytest.raises(DataError, match="validation spectra have 79 points"):
        fit_cnn(X, y, X[:, :79], y, SMALL, train=FAST)
    bad = X.copy()
    bad[3, 4] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        fit_cnn(bad, y, X, y, SMALL, train=FAST)


def test_stratified_folds_span_the_range() -> None:
    y = np.random.default_rng(0).uniform(150, 250, 103)
    folds = stratified_folds(y, 5, seed=0)
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    order = np.argsort(y)
    for k in range(5):
        # Every fold holds one of each consecutive block of 5 in target order.
        assert (folds[order[:100]].reshape(20, 5) == k).sum(axis=1).tolist() == [1] * 20


def test_ensemble_gives_out_of_fold_predictions() -> None:
    X, y, _ = synthetic(45, seed=0)
    train = replace(FAST, epochs=3)
    fit = fit_cnn_ensemble(X, y, SMALL, train=train, n_members=3)
    assert len(fit.predictor.members) == 3 and len(fit.history) == 3
    assert fit.oof_pred is not None and fit.oof_pred.shape == (45,)
    assert np.isfinite(fit.oof_pred).all()
