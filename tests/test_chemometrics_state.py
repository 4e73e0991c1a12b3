"""dump_steps / load_steps: a fitted pipeline survives npz + JSON without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from nirwatch.chemometrics import (
    ExtendedMultiplicativeScatterCorrection,
    MultiplicativeScatterCorrection,
    SavitzkyGolay,
    StandardNormalVariate,
    WavelengthRange,
    dump_steps,
    load_steps,
)
from nirwatch.chemometrics.state import apply_steps, register_stateful, stateful_class
from nirwatch.errors import DataError


def _fitted_steps(X: np.ndarray) -> list:
    wl = 600 + 2 * np.arange(X.shape[1])
    steps = [
        WavelengthRange(wl, start=1100, stop=1800),
        ExtendedMultiplicativeScatterCorrection(order=2),
        SavitzkyGolay(window_length=15, polyorder=2, deriv=1),
        MultiplicativeScatterCorrection(),
        StandardNormalVariate(),
    ]
    for step in steps:
        X = step.fit_transform(X)
    return steps


def _spectra(n: int = 40, p: int = 650) -> np.ndarray:
    rng = np.random.default_rng(0)
    u = np.linspace(0, 1, p)
    base = 1 + np.exp(-(((u - 0.3) / 0.05) ** 2)) + 0.5 * np.exp(-(((u - 0.7) / 0.1) ** 2))
    return (
        rng.uniform(0.8, 1.2, (n, 1)) * base
        + rng.normal(0, 0.05, (n, 1))
        + 1e-3 * rng.normal(size=(n, p))
    )


def test_round_trip_through_npz(tmp_path: Path) -> None:
    X = _spectra()
    steps = _fitted_steps(X)
    arrays, meta = dump_steps(steps, prefix="pre")
    assert all(k.startswith("pre.") for k in arrays)
    np.savez(tmp_path / "steps.npz", **arrays)
    (tmp_path / "steps.json").write_text(json.dumps(meta))
    with np.load(tmp_path / "steps.npz", allow_pickle=False) as npz:
        loaded = load_steps(
            {k: npz[k] for k in npz.files}, json.loads((tmp_path / "steps.json").read_text())
        )
    assert [type(s) for s in loaded] == [type(s) for s in steps]
    X_new = _spectra(5)
    assert_allclose(apply_steps(loaded, X_new), apply_steps(steps, X_new), rtol=1e-12)


def test_one_registry_holds_every_storable_class() -> None:
    """Steps and bundle components (PLS, statistics, the CNN) resolve through one registry."""
    for name in (
        "MultiplicativeScatterCorrection",
        "ExtendedMultiplicativeScatterCorrection",
        "StandardNormalVariate",
        "SavitzkyGolay",
        "WavelengthRange",
        "SpectralAugmenter",
        "PLSCalibration",
        "CalibrationStatistics",
        "CNNPredictor",  # registered when its (torch) module is imported, on first lookup
    ):
        assert stateful_class(name).__name__ == name
    with pytest.raises(DataError, match="unknown class 'Popen', which nirwatch lacks"):
        stateful_class("Popen")
    with pytest.raises(TypeError, match="lacks from_state"):
        register_stateful(type("NoState", (), {"to_state": lambda self: ({}, {})}))


def test_unknown_class_and_missing_array_are_refused() -> None:
    X = _spectra()
    arrays, meta = dump_steps(_fitted_steps(X))
    bad = json.loads(json.dumps(meta))
    bad["steps"][1]["class"] = "os.system"
    with pytest.raises(DataError, match="unknown class 'os.system'"):
        load_steps(arrays, bad)
    del arrays["step.1.reference_"]
    with pytest.raises(DataError, match="'step.1.reference_' missing"):
        load_steps(arrays, meta)


def test_unregistered_step_is_refused() -> None:
    class Custom(StandardNormalVariate):
        pass

    with pytest.raises(DataError, match="not a registered class"):
        dump_steps([Custom().fit(_spectra())])
