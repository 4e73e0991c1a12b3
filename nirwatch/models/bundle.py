"""Model bundle: a verified, pickle-free directory holding everything one model version needs.

Layout (every file but the manifest and its signature is listed with its SHA-256 in the
manifest's ``files``)::

    <bundle>/
      manifest.json            format, version, target (name, unit, calibrated range),
                               wavelengths + grid id, data hash,
                               metrics, package versions, fallback limit, files {name: sha256}
      manifest.sig             optional: "hmac-sha256:<hex>" of manifest.json's bytes
      preprocessing.npz/.json  named preprocessing pipelines ("cnn", "statistics")
      pls.npz/.json            the PLS calibration (its own preprocessing inside)
      cnn.safetensors/.json    the CNN (optional)
      calibration_stats.npz/.json  Hotelling T² / Q model of the calibration spectra
      report/...               optional extra files (training report and plots)

Arrays go to ``.npz`` (read with ``allow_pickle=False``) or safetensors, metadata to JSON; each
``.json`` is ``{"class": <registered class name>, "meta": {...}}`` so loading resolves classes
through the one registry of storable classes (:func:`nirwatch.chemometrics.state.stateful_class`),
never by importing a name found in a file.

:func:`write_bundle` builds every file in memory, writes them into a hidden temporary sibling,
fsyncs and renames it into place, so a partial bundle is never visible. :func:`load_bundle`
verifies every checksum (and the HMAC when a key is given) before deserialising anything. The
bundle checksum is the SHA-256 of ``manifest.json``. The loaded predictor,
:class:`LoadedBundle`, lives in :mod:`nirwatch.models.bundle_predictor`, the format constants and
verification in :mod:`nirwatch.models.bundle_format` (both re-exported here).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from nirwatch.chemometrics.state import Stateful, dump_steps, load_steps, stateful_class
from nirwatch.errors import BundleError, DataError
from nirwatch.grid import axis_id
from nirwatch.models.bundle_format import (
    FORMAT,
    MANIFEST,
    SIGNATURE,
    bundle_checksum,
    check_name,
    read_manifest,
    read_verified,
    sha256_bytes,
    verify_bundle,
)
from nirwatch.models.bundle_predictor import LoadedBundle
from nirwatch.security import sign_bytes

# The format and verification live in nirwatch.models.bundle_format, the predictor in
# nirwatch.models.bundle_predictor; their public names are part of this module's API.
__all__ = [
    "FORMAT",
    "MANIFEST",
    "SIGNATURE",
    "BundleContents",
    "LoadedBundle",
    "bundle_checksum",
    "data_hash",
    "fsync_dir",
    "json_ready",
    "load_bundle",
    "new_version",
    "package_versions",
    "read_manifest",
    "sha256_bytes",
    "verify_bundle",
    "write_bundle",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleContents:
    """Everything :func:`write_bundle` stores.

    ``pls`` predicts from raw spectra (n, n_points); ``statistics`` scores spectra after the
    ``statistics_steps``, or, with ``statistics_on_pls``, after the PLS's own preprocessing
    (``pls.predict_and_preprocess``: one pass per batch for both; for an
    :class:`~nirwatch.chemometrics.pls_average.AveragedPLSCalibration`, its lead member's
    preprocessing); ``cnn`` predicts after the ``cnn_steps``. ``fallback_limit`` is the
    largest |CNN − PLS| difference accepted before falling back to PLS (e.g. 3 × RMSECV).
    ``target_range`` is the (min, max) of the calibration's reference values: predictions
    outside it are extrapolations and are not releasable.

    ``serving`` says what serves (``{"model": "pls"|"cnn"|"blend", "cnn_weight": w}``; None:
    the CNN when present), ``interval`` how prediction intervals are made (conformal quantiles
    per model, scaled by leverage), ``max_interval_width`` the widest releasable interval,
    ``extrapolation`` which model serves within ``margin`` of a range end and beyond it, and
    ``selection`` the validation that chose them (report data).
    """

    target: str
    unit: str
    wavelengths: np.ndarray
    data_hash: str
    pls: Stateful
    statistics: Stateful
    fallback_limit: float
    statistics_steps: Sequence[Stateful] = ()
    statistics_on_pls: bool = False
    cnn: Stateful | None = None
    cnn_steps: Sequence[Stateful] = ()
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    extra_files: Mapping[str, bytes] = field(default_factory=dict)
    version: str | None = None
    target_range: tuple[float, float] | None = None
    serving: Mapping[str, Any] | None = None
    interval: Mapping[str, Any] | None = None
    max_interval_width: float | None = None
    extrapolation: Mapping[str, Any] | None = None
    selection: Mapping[str, Any] | None = None


def _target(contents: BundleContents) -> dict[str, Any]:
    target: dict[str, Any] = {"name": contents.target, "unit": contents.unit}
    if contents.target_range is not None:
        lo, hi = (float(v) for v in contents.target_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise BundleError(
                f"target_range must be finite (min, max), got {contents.target_range}"
            )
        target["range"] = [lo, hi]
    return target


def _optional_sections(contents: BundleContents) -> dict[str, Any]:
    """Manifest sections written only when given (older bundles lack them)."""
    out: dict[str, Any] = {}
    for name in ("serving", "interval", "extrapolation", "selection"):
        value = getattr(contents, name)
        if value is not None:
            out[name] = json_ready(value)
    if contents.max_interval_width is not None:
        out["max_interval_width"] = float(contents.max_interval_width)
    return out


def json_ready(obj: Any) -> Any:
    """Plain JSON copy: numpy scalars to Python, NaN/inf to None (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def data_hash(X: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of the training data: X then y as little-endian float64, C order."""
    h = hashlib.sha256()
    for a in (X, y):
        h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("nirwatch", "torch", "numpy", "scikit-learn", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode()


def _component_files(name: str, comp: Stateful) -> dict[str, bytes]:
    arrays, meta = comp.to_state()
    return {
        f"{name}.npz": _npz_bytes(arrays),
        f"{name}.json": _json_bytes({"class": type(comp).__name__, "meta": meta}),
    }


def _pipeline_files(pipelines: Mapping[str, Sequence[Stateful]]) -> dict[str, bytes]:
    arrays: dict[str, np.ndarray] = {}
    spec: dict[str, Any] = {}
    for pname, steps in pipelines.items():
        a, spec[pname] = dump_steps(steps, prefix=pname)
        arrays.update(a)
    return {
        "preprocessing.npz": _npz_bytes(arrays),
        "preprocessing.json": _json_bytes({"pipelines": spec}),
    }


def _cnn_files(cnn: Stateful) -> dict[str, bytes]:
    from safetensors.numpy import save

    arrays, meta = cnn.to_state()
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return {
        "cnn.safetensors": save(tensors),
        "cnn.json": _json_bytes({"class": type(cnn).__name__, "meta": meta}),
    }


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_version(when: datetime, digest: str) -> str:
    """A sortable, unique version string: UTC timestamp, data hash prefix, random suffix."""
    return f"{when:%Y%m%dT%H%M%SZ}-{digest[:8]}-{uuid.uuid4().hex[:4]}"


def write_bundle(
    contents: BundleContents, out_dir: str | Path, *, hmac_key: bytes | str | None = None
) -> Path:
    """Write a bundle atomically at ``out_dir`` (which must not exist) and return its path.

    Raises
    ------
    BundleError
        If ``out_dir`` exists or a component cannot be stored.
    """
    out = Path(out_dir)
    if out.exists():
        raise BundleError(f"refusing to overwrite existing path {out}")
    wl = np.asarray(contents.wavelengths, dtype=float)
    files: dict[str, bytes] = {}
    files.update(
        _pipeline_files({"cnn": contents.cnn_steps, "statistics": contents.statistics_steps})
    )
    files.update(_component_files("pls", contents.pls))
    files.update(_component_files("calibration_stats", contents.statistics))
    if contents.cnn is not None:
        files.update(_cnn_files(contents.cnn))
    for name, data in contents.extra_files.items():
        check_name(name)
        if name in files:
            raise BundleError(f"extra file {name!r} clashes with a bundle file")
        files[name] = data
    created = datetime.now(UTC)
    manifest = {
        "format": FORMAT,
        "created_at": created.isoformat(),
        "version": contents.version or new_version(created, contents.data_hash),
        "target": _target(contents),
        "grid": axis_id(wl),
        "wavelengths": wl.tolist(),
        "data_hash": contents.data_hash,
        "metrics": dict(contents.metrics),
        "training": dict(contents.training),
        "packages": package_versions(),
        "fallback_limit": float(contents.fallback_limit),
        "statistics_input": "pls" if contents.statistics_on_pls else "steps",
        "models": {"cnn": contents.cnn is not None, "pls": True},
        **_optional_sections(contents),
        "files": {name: sha256_bytes(data) for name, data in sorted(files.items())},
    }
    manifest_bytes = _json_bytes(manifest)

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise BundleError(f"cannot create bundle directory next to {out}: {exc}") from exc
    try:
        for name, data in files.items():
            _write_synced(tmp / name, data)
        if hmac_key:
            _write_synced(tmp / SIGNATURE, sign_bytes(manifest_bytes, hmac_key).encode())
        # The manifest is written last: a directory with a manifest is complete.
        _write_synced(tmp / MANIFEST, manifest_bytes)
        for d in sorted({(tmp / n).parent for n in files} | {tmp}, reverse=True):
            fsync_dir(d)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        # Out of disk, file-size limit, permissions: nothing partial stays, and the caller gets
        # a nirwatch error naming the bundle rather than a bare traceback.
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"could not write bundle {out}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (version %s)", out, manifest["version"])
    return out


class _Files:
    """Typed access to a verified bundle's file contents."""

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root = root
        self.files = files

    def raw(self, name: str) -> bytes:
        if name not in self.files:
            raise BundleError(f"{self.root}: {name} is not listed in the manifest")
        return self.files[name]

    def json(self, name: str) -> dict[str, Any]:
        try:
            obj = json.loads(self.raw(name))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{self.root}/{name} is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise BundleError(f"{self.root}/{name}: expected a JSON object")
        return obj

    def npz(self, name: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.raw(name)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def component(self, name: str) -> Any:
        spec = self.json(f"{name}.json")
        cls = stateful_class(str(spec.get("class")))
        return cls.from_state(self.npz(f"{name}.npz"), spec.get("meta", {}))

    def pipelines(self) -> dict[str, list[Any]]:
        spec = self.json("preprocessing.json").get("pipelines", {})
        arrays = self.npz("preprocessing.npz")
        return {pname: load_steps(arrays, meta) for pname, meta in spec.items()}

    def cnn(self, device: str) -> Any:
        from safetensors.numpy import load

        spec = self.json("cnn.json")
        cls = stateful_class(str(spec.get("class")))
        arrays = load(self.raw("cnn.safetensors"))
        return cls.from_state(arrays, spec.get("meta", {}), device=device)


def load_bundle(
    path: str | Path,
    hmac_key: bytes | str | None = None,
    *,
    device: str = "auto",
    expected_checksum: str | None = None,
) -> LoadedBundle:
    """Verify and load a bundle into a :class:`LoadedBundle` (a ``Predictor``).

    A CNN that fails to load does not fail the bundle: PLS serves with reason
    ``cnn_unavailable`` (logged). Checksum, signature or manifest problems always fail;
    ``expected_checksum`` (the manifest digest recorded by the registry) must match when given.
    """
    root = Path(path)
    manifest, checksum, contents = read_verified(root, hmac_key, expected_checksum)
    files = _Files(root, contents)
    try:
        pipelines = files.pipelines()
        pls = files.component("pls")
        stats = files.component("calibration_stats")
    except (KeyError, ValueError, TypeError, DataError) as exc:
        raise BundleError(f"{root}: cannot load bundle components: {exc}") from exc
    cnn = None
    cnn_error: str | None = None
    if manifest.get("models", {}).get("cnn"):
        try:
            cnn = files.cnn(device)
        except Exception as exc:  # any CNN failure degrades to PLS, visibly
            cnn_error = f"{type(exc).__name__}: {exc}"
            log.warning("bundle %s: CNN not loaded, serving PLS: %s", root, cnn_error)
    return LoadedBundle(
        path=root,
        manifest=manifest,
        checksum=checksum,
        pls=pls,
        statistics=stats,
        statistics_steps=pipelines.get("statistics", []),
        statistics_on_pls=manifest.get("statistics_input") == "pls",
        cnn=cnn,
        cnn_steps=pipelines.get("cnn", []),
        cnn_load_error=cnn_error,
    )
