"""Model bundle: round trip, tamper detection, HMAC, atomic write, CNN fallback reasons.

The components (tests/bundle_support.py) are small but real (fitted least squares, PCA
limits) stand-ins that follow the ``to_state`` / ``from_state`` contract, so the format is
tested independently of the chemometrics modules; tests/test_bundle_real.py uses the real ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_support import Centre, LinearModel, make_contents, make_data

from nirwatch.errors import BundleError, ChecksumMismatchError, DataError
from nirwatch.models import bundle as bundle_mod
from nirwatch.models.bundle import (
    bundle_checksum,
    load_bundle,
    read_manifest,
    write_bundle,
)


def fitted_cnn(**kw: Any) -> LinearModel:
    X, y = make_data()
    centre = Centre().fit(X)
    return LinearModel(**kw).fit(centre.transform(X), y)


def test_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    contents = make_contents(cnn=fitted_cnn(), extra={"report/report.json": b"{}"})
    path = write_bundle(contents, tmp_path / "b")
    X, y = make_data(10, seed=1)
    loaded = load_bundle(path)
    pred = loaded.predict(X.astype(np.float32))
    expected_pls = contents.pls.predict(X)  # type: ignore[attr-defined]
    np.testing.assert_allclose(pred.pls_value, expected_pls, rtol=1e-6)
    assert list(pred.model) == ["cnn"] * 10
    assert pred.fallback_reason == [None] * 10
    np.testing.assert_allclose(pred.value, y, atol=0.2)
    m = read_manifest(path)
    assert loaded.version == m["version"] and loaded.target == "assay" and loaded.unit == "mg"
    assert loaded.grid == "lin:600:638:2"
    assert loaded.checksum == bundle_checksum(path)
    assert set(m["files"]) >= {"pls.npz", "cnn.safetensors", "report/report.json"}
    assert m["data_hash"] == contents.data_hash and m["packages"]["numpy"] == np.__version__
    # a second load is bit-identical
    again = load_bundle(path).predict(X.astype(np.float32))
    np.testing.assert_array_equal(again.value, pred.value)


def test_no_pickle_in_any_npz(tmp_path: Path) -> None:
    path = write_bundle(make_contents(cnn=fitted_cnn()), tmp_path / "b")
    for f in path.glob("*.npz"):
        with np.load(f, allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)


@pytest.mark.parametrize(
    "name",
    ["pls.npz", "pls.json", "preprocessing.npz", "calibration_stats.json", "cnn.safetensors"],
)
def test_flipped_byte_in_any_file_is_refused(tmp_path: Path, name: str) -> None:
    path = write_bundle(make_contents(cnn=fitted_cnn()), tmp_path / "b")
    f = path / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError) as exc:
        load_bundle(path)
    msg = str(exc.value)
    assert name in msg and "expected" in msg and "got" in msg


def test_missing_file_and_edited_manifest_are_refused(tmp_path: Path) -> None:
    path = write_bundle(make_contents(), tmp_path / "b")
    (path / "pls.npz").unlink()
    with pytest.raises(ChecksumMismatchError, match="pls.npz is missing"):
        load_bundle(path)
    path2 = write_bundle(make_contents(), tmp_path / "c")
    m = json.loads((path2 / "manifest.json").read_text())
    m["fallback_limit"] = 1e9
    (path2 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ChecksumMismatchError):  # only with a key can a manifest edit be caught
        load_bundle(path2, hmac_key="k")


def test_hmac_signature(tmp_path: Path) -> None:
    path = write_bundle(make_contents(), tmp_path / "b", hmac_key="secret")
    assert load_bundle(path, hmac_key="secret").version
    with pytest.raises(ChecksumMismatchError, match="manifest.json"):
        load_bundle(path, hmac_key="wrong")
    m = (path / "manifest.json").read_bytes().replace(b'"mg"', b'"g"')
    (path / "manifest.json").write_bytes(m)
    with pytest.raises(ChecksumMismatchError):
        load_bundle(path, hmac_key="secret")


def test_unsigned_bundle_refused_when_key_required(tmp_path: Path) -> None:
    path = write_bundle(make_contents(), tmp_path / "b")
    with pytest.raises(ChecksumMismatchError, match="signature missing"):
        load_bundle(path, hmac_key="secret")


def test_atomic_write_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bundle_mod._write_synced
    calls = []

    def failing(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(bundle_mod, "_write_synced", failing)
    with pytest.raises(BundleError, match="No space"):
        write_bundle(make_contents(cnn=fitted_cnn()), tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match="overwrite"):
        write_bundle(make_contents(), tmp_path / "b")


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def rewrite(path: Path, name: str, data: bytes) -> None:
    """Replace a bundle file and its checksum (what an attacker without the HMAC key can do)."""
    (path / name).write_bytes(data)
    m = json.loads((path / "manifest.json").read_text())
    m["files"][name] = bundle_mod.sha256_bytes(data)
    (path / "manifest.json").write_text(json.dumps(m))


def test_unknown_component_class_is_refused(tmp_path: Path) -> None:
    path = write_bundle(make_contents(), tmp_path / "b")
    rewrite(path, "pls.json", json.dumps({"class": "Popen", "meta": {}}).encode())
    with pytest.raises(BundleError, match="'Popen', which nirwatch lacks"):
        load_bundle(path)


def test_wrong_shape_is_a_data_error(tmp_path: Path) -> None:
    loaded = load_bundle(write_bundle(make_contents(), tmp_path / "b"))
    with pytest.raises(DataError, match=r"expected spectra of shape \(n, 20\).*got \(3, 19\)"):
        loaded.predict(np.zeros((3, 19)))


def test_fallback_cnn_unavailable(tmp_path: Path) -> None:
    loaded = load_bundle(write_bundle(make_contents(), tmp_path / "b"))
    X, _ = make_data(4, seed=2)
    pred = loaded.predict(X)
    assert not loaded.has_cnn
    assert pred.fallback_reason == ["cnn_unavailable"] * 4 and list(pred.model) == ["pls"] * 4
    assert np.isnan(pred.cnn_value).all()
    np.testing.assert_array_equal(pred.value, pred.pls_value)


def test_fallback_cnn_failed_to_load(tmp_path: Path) -> None:
    path = write_bundle(make_contents(cnn=fitted_cnn()), tmp_path / "b")
    rewrite(path, "cnn.json", json.dumps({"class": "NoSuchNet", "meta": {}}).encode())
    loaded = load_bundle(path)
    assert loaded.cnn_load_error and "NoSuchNet" in loaded.cnn_load_error
    assert loaded.predict(make_data(2)[0]).fallback_reason == ["cnn_unavailable"] * 2


def test_fallback_cnn_error(tmp_path: Path) -> None:
    loaded = load_bundle(write_bundle(make_contents(cnn=fitted_cnn(fail=True)), tmp_path / "b"))
    pred = loaded.predict(make_data(3)[0])
    assert pred.fallback_reason == ["cnn_error"] * 3 and list(pred.model) == ["pls"] * 3


def test_fallback_disagree_and_non_finite(tmp_path: Path) -> None:
    loaded = load_bundle(write_bundle(make_contents(cnn=fitted_cnn(scale=2.0)), tmp_path / "b"))
    X, y = make_data(30, seed=3)
    pred = loaded.predict(X)
    far = np.abs(pred.cnn_value - pred.pls_value) > 1.0
    assert far.any() and (~far).any()
    assert pred.fallback_reason == ["cnn_pls_disagree" if f else None for f in far]
    np.testing.assert_array_equal(pred.value[far], pred.pls_value[far])
    np.testing.assert_array_equal(pred.value[~far], pred.cnn_value[~far])

    nan_cnn = load_bundle(write_bundle(make_contents(cnn=fitted_cnn(scale=np.nan)), tmp_path / "c"))
    p2 = nan_cnn.predict(X[:2])
    assert p2.fallback_reason == ["cnn_non_finite"] * 2
    assert np.isfinite(p2.value).all()


def test_calibrated_range_flags_extrapolations(tmp_path: Path) -> None:
    # make_data's references lie in [0, 10]; a calibrated range of [2, 8] makes both ends
    # extrapolations.
    contents = dataclasses.replace(make_contents(), target_range=(2.0, 8.0))
    loaded = load_bundle(write_bundle(contents, tmp_path / "b"))
    assert read_manifest(tmp_path / "b")["target"]["range"] == [2.0, 8.0]
    assert loaded.target_range == (2.0, 8.0)
    X, _ = make_data(40, seed=5)
    pred = loaded.predict(X)
    assert pred.outside_range is not None
    np.testing.assert_array_equal(pred.outside_range, (pred.value < 2.0) | (pred.value > 8.0))
    assert pred.outside_range.any() and (~pred.outside_range).any()
    # A bundle without a range (written before it was stored) flags nothing.
    old = load_bundle(write_bundle(make_contents(), tmp_path / "c"))
    assert old.target_range is None and old.predict(X).outside_range is None
    bad = dataclasses.replace(make_contents(), target_range=(8.0, 2.0))
    with pytest.raises(BundleError, match="target_range"):
        write_bundle(bad, tmp_path / "d")


def test_out_of_model(tmp_path: Path) -> None:
    loaded = load_bundle(write_bundle(make_contents(), tmp_path / "b"))
    X, _ = make_data(3, seed=4)
    X[1] += np.linspace(0, 5, X.shape[1])  # a baseline the calibration never saw
    pred = loaded.predict(X)
    assert pred.out_of_model[1]
    assert pred.q[1] > pred.q_limit
    assert pred.q_limit == loaded.q_limit
