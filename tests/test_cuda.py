"""The CUDA path: inference, training and a bundle on the GPU agree with the CPU.

Skipped where CUDA is absent (CI); run on a GPU machine with
``pytest tests/test_cuda.py`` (benchmarks/gpu_check.sh does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.cnn import CNNConfig, CNNPredictor, SpectralCNN, resolve_device
from nirwatch.chemometrics.scatter import ExtendedMultiplicativeScatterCorrection
from nirwatch.models.bundle import load_bundle
from nirwatch.simulation.simulator import calibration_set
from training.cnn import TrainConfig, fit_cnn
from training.fit import fit_bundle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SMALL = CNNConfig(conv_filters=(4,), kernel_sizes=(9,), pool_size=4, dense_units=(16,))


def random_members(n: int, length: int) -> list[SpectralCNN]:
    torch.manual_seed(3)
    members = [SpectralCNN(SMALL.with_input_length(length)) for _ in range(n)]
    rng = np.random.default_rng(3)
    for m in members:
        m.set_scaling(rng.normal(size=(50, length)), rng.normal(10, 2, 50))
    return members


def test_device_resolution_on_a_gpu_machine() -> None:
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.parametrize("chunk", [7, 16384])
def test_cuda_predictions_equal_cpu_predictions(chunk: int) -> None:
    X = np.random.default_rng(0).normal(size=(1000, 80))
    cpu = CNNPredictor(random_members(2, 80), device="cpu")
    gpu = CNNPredictor(random_members(2, 80), device="cuda", chunk_size=chunk)
    assert all(p.device.type == "cuda" for m in gpu.members for p in m.parameters())
    expected, got = cpu.predict(X), gpu.predict(X)
    assert got.dtype == np.float64 and got.shape == (1000,)
    # TF32 convolutions on Ampere+ keep ~10 mantissa bits: agree to ~1e-3 relative.
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def test_default_chunk_on_cuda_is_large() -> None:
    assert CNNPredictor(random_members(1, 80), device="cuda").chunk_size >= 4096


def test_training_on_cuda_learns_and_round_trips_to_cpu() -> None:
    X, y, _ = calibration_set(240, seed=0)
    train = TrainConfig(epochs=15, batch_size=64, patience=50, device="cuda", seed=1)
    fit = fit_cnn(
        X[:200], y[:200], X[200:], y[200:], SMALL,
        steps=[ExtendedMultiplicativeScatterCorrection()],
        augmenter=SpectralAugmenter(n_copies=2, random_state=0),
        train=train,
    )  # fmt: skip
    assert fit.predictor.device.type == "cuda"
    pred = fit.predict(X[200:])
    assert np.all(np.isfinite(pred))
    # It learned something: better than predicting the mean.
    rmse = float(np.sqrt(np.mean((pred - y[200:]) ** 2)))
    assert rmse < 0.8 * float(np.std(y[200:]))
    arrays, meta = fit.predictor.to_state()
    on_cpu = CNNPredictor.from_state(arrays, meta, device="cpu")
    Z = fit.steps[0].transform(X[200:])
    np.testing.assert_allclose(on_cpu.predict(Z), fit.predictor.predict(Z), rtol=2e-3, atol=1e-2)


def test_bundle_served_from_cuda_matches_cpu(tmp_path: Path) -> None:
    X, y, wl = calibration_set(200, seed=0)
    out = fit_bundle(
        X, y, wl, target="api", unit="mg", model="both", out_dir=tmp_path / "b",
        cv_folds=5, pls_max_components=8, epochs=3, cnn_members=2, augment_copies=1,
        nested_cv=False, cv_repeats=1,
        device="cuda",
    )  # fmt: skip
    on_gpu = load_bundle(out, device="cuda")
    on_cpu = load_bundle(out, device="cpu")
    assert on_gpu.has_cnn and on_gpu.cnn is not None and on_gpu.cnn.device.type == "cuda"
    Xn, _, _ = calibration_set(64, seed=5)
    g, c = on_gpu.predict(Xn), on_cpu.predict(Xn)
    assert list(g.model) == list(c.model)
    np.testing.assert_allclose(g.value, c.value, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(g.t2, c.t2, rtol=1e-9)


_DETERMINISTIC_FIT = """
import hashlib, sys
import numpy as np
from nirwatch.simulation.simulator import calibration_set
from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.cnn import CNNConfig
from nirwatch.chemometrics.scatter import ExtendedMultiplicativeScatterCorrection
from training.cnn import TrainConfig, fit_cnn

X, y, _ = calibration_set(120, seed=0)
config = CNNConfig(conv_filters=(4,), kernel_sizes=(9,), pool_size=4, dense_units=(16,))
train = TrainConfig(epochs=5, batch_size=32, device="cuda", deterministic=True, seed=int(sys.argv[1]))
fit = fit_cnn(
    X[:100], y[:100], X[100:], y[100:], config,
    steps=[ExtendedMultiplicativeScatterCorrection()],
    augmenter=SpectralAugmenter(n_copies=2, random_state=0),
    train=train,
)
print(hashlib.sha256(fit.predict(X[100:]).tobytes()).hexdigest())
"""


def test_determinism_switch_on_cuda_gives_bit_identical_reruns() -> None:
    # cuBLAS reads CUBLAS_WORKSPACE_CONFIG when the process creates its handle: a fresh process.
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))

    def digest(seed: int) -> str:
        out = subprocess.run(
            [sys.executable, "-c", _DETERMINISTIC_FIT, str(seed)],
            env=env, cwd=root, capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[-1]

    first, second, other = digest(7), digest(7), digest(8)
    assert first == second
    assert first != other
