"""The fused CNN ensemble predicts what its members predict (issue 16)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from nirwatch.chemometrics.cnn import CNNConfig, CNNPredictor, SpectralCNN
from nirwatch.chemometrics.cnn_fused import FusedEnsemble, fusable


def _members(config: CNNConfig, n: int, seed: int = 0) -> list[SpectralCNN]:
    """``n`` randomly initialised networks, each with its own standardisation and target scale
    (as the K-fold members have: each is scaled on its own training folds)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    members = []
    for i in range(n):
        net = SpectralCNN(config)
        X = rng.normal(0.4, 0.05, size=(40, config.input_length)) * rng.uniform(0.5, 2.0)
        net.set_scaling(X, rng.normal(200 + 5 * i, 10 + i, 40))
        members.append(net.eval())
    return members


def _reference(members: list[SpectralCNN], X: np.ndarray) -> np.ndarray:
    """The ensemble mean computed member by member, independently of CNNPredictor."""
    with torch.inference_mode():
        x = torch.as_tensor(X, dtype=torch.float32)
        each = [m.predict_units(x).double().numpy() for m in members]
    return np.mean(each, axis=0)


ARCHITECTURES: list[dict[str, Any]] = [
    {},  # the shipped default: 8 filters x 32 taps, pool 16, dense (64, 16), leaky ReLU, skip
    {"activation": "relu"},
    {"activation": "elu"},
    {"activation": "gelu"},
    {"linear_skip": False},
    {"dense_units": ()},
    {"dense_units": (), "linear_skip": False},
    {"dense_units": (32, 16, 8)},
    {"conv_filters": (3,), "kernel_sizes": (9,), "pool_size": 5},
]


@pytest.mark.parametrize("kw", ARCHITECTURES, ids=lambda kw: ",".join(kw) or "default")
def test_fused_ensemble_predicts_the_members_mean(kw: dict[str, Any]) -> None:
    members = _members(CNNConfig(**kw).with_input_length(650), n=5)
    pred = CNNPredictor(members, device="cpu", chunk_size=64)
    assert pred.fused is not None
    # Spectra around the training ones and far from them (both slopes of the activation).
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(0.4, 0.05, (150, 650)), rng.normal(0.0, 3.0, (50, 650))]).astype(
        np.float32
    )
    want = _reference(members, X)
    got = pred.predict(X)
    assert got.dtype == np.float64 and got.shape == (200,)
    spread = np.abs(want - want.mean()).max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * spread)
    np.testing.assert_allclose(pred.predict_members(X), want, rtol=1e-5, atol=1e-5 * spread)


def test_fused_ensemble_chunks_and_odd_lengths() -> None:
    """Chunk boundaries, a single spectrum, and input points past the last pooling window."""
    members = _members(CNNConfig().with_input_length(663), n=3, seed=1)
    X = np.random.default_rng(4).normal(0.4, 0.05, (101, 663)).astype(np.float32)
    want = _reference(members, X)
    for chunk in (1, 7, 100, 1000):
        got = CNNPredictor(members, device="cpu", chunk_size=chunk).predict(X)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    one = CNNPredictor(members, device="cpu").predict(X[:1])
    np.testing.assert_allclose(one, want[:1], rtol=1e-5)


def test_a_single_network_is_fused_too() -> None:
    members = _members(CNNConfig().with_input_length(300), n=1, seed=2)
    X = np.random.default_rng(5).normal(0.4, 0.05, (20, 300)).astype(np.float32)
    fused = FusedEnsemble(members)
    with torch.inference_mode():
        got = fused(torch.as_tensor(X)).double().numpy()
    np.testing.assert_allclose(got, _reference(members, X), rtol=1e-5)


def test_architectures_the_fused_form_does_not_cover_use_the_members() -> None:
    for config in (
        CNNConfig(conv_filters=(4, 4), kernel_sizes=(9, 5), strides=(1, 1), pool_size=4),
        CNNConfig(strides=(2,)),
        CNNConfig(pool_size=1, dense_units=(8,)),
    ):
        members = _members(config.with_input_length(200), n=2)
        assert not fusable(members)
        pred = CNNPredictor(members, device="cpu")
        assert pred.fused is None
        X = np.random.default_rng(6).normal(0.4, 0.05, (9, 200)).astype(np.float32)
        np.testing.assert_allclose(pred.predict(X), _reference(members, X), rtol=1e-5)
        with pytest.raises(ValueError, match="one stride-1 convolution followed by pooling"):
            FusedEnsemble(members)
    members = _members(CNNConfig().with_input_length(200), n=2)
    assert CNNPredictor(members, device="cpu", fuse=False).fused is None


def test_state_round_trip_is_unchanged_and_fuses_on_load() -> None:
    """Bundles keep storing the members; the fused module is rebuilt from them on load."""
    members = _members(CNNConfig().with_input_length(400), n=5)
    pred = CNNPredictor(members, device="cpu")
    arrays, meta = pred.to_state()
    assert meta["n_members"] == 5 and all(k.startswith("member.") for k in arrays)
    again = CNNPredictor.from_state(arrays, meta, device="cpu")
    assert again.fused is not None
    X = np.random.default_rng(7).normal(0.4, 0.05, (33, 400)).astype(np.float32)
    np.testing.assert_allclose(again.predict(X), _reference(members, X), rtol=1e-5)
