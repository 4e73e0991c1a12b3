"""Synthetic inputs that several test modules build: predictions, spectra files, certificates.

Shared here so that no test module imports another (tests/test_architecture.py).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitoring.drift_monitor import DriftMonitor, DriftSettings
from nirwatch.chemometrics.cnn import CNNConfig
from nirwatch.messages.prediction import Prediction
from nirwatch.messages.spectrum import SpectrumHeader, encode_spectrum, new_message_id
from nirwatch.metrics import DriftMetrics
from training.cnn import TrainConfig

AUDIT_GRID = "lin:600:1898:2"

# ---------------------------------------------------------------- audit trail


def publication(
    sample: str, instrument: str = "probe-1", published_at: float | None = None, **kw: object
) -> tuple[Prediction, bytes]:
    """A prediction as the worker publishes it, and the raw spectrum it was made from."""
    mid = str(kw.pop("message_id", new_message_id()))
    h = SpectrumHeader(mid, instrument, sample, 1.7e9, AUDIT_GRID, 650)
    raw = encode_spectrum(h, np.random.default_rng(abs(hash(mid)) % 2**32).normal(size=650))
    base: dict[str, object] = dict(
        prediction_id=uuid.uuid4().hex,
        message_id=mid,
        instrument_id=instrument,
        sample_id=sample,
        timestamp=1.7e9,
        published_at=time.time() if published_at is None else published_at,
        target="api_mg",
        value=201.5,
        model="cnn",
        model_version="3",
        bundle_checksum="c" * 64,
        t2=1.2,
        q=0.03,
        t2_limit=9.0,
        q_limit=0.1,
    )
    base.update(kw)
    return Prediction(**base), raw  # type: ignore[arg-type]


# ---------------------------------------------------------------- drift monitor


def drift_predictions(
    rng: np.random.Generator,
    n: int,
    *,
    instrument: str = "probe-1",
    product: str = "tablet-a",
    content: float = 200.0,
    disagreement: float = 0.0,
    oom_rate: float = 0.02,
    version: str = "v0001",
    start: int = 0,
) -> Iterator[Prediction]:
    """In-control predictions of one instrument and product (content ~ N(content, 3))."""
    for i in range(start, start + n):
        cnn = content + rng.normal(0, 3.0)
        pls = cnn - disagreement + rng.normal(0, 1.0)
        yield Prediction(
            prediction_id=f"p{i}",
            message_id=f"m{i}",
            instrument_id=instrument,
            sample_id=f"{instrument}-{i}",
            timestamp=1e9 + i,
            published_at=1e9 + i,
            target="assay",
            value=cnn,
            model="cnn",
            model_version=version,
            bundle_checksum="abc",
            product=product,
            cnn_value=cnn,
            pls_value=pls,
            t2=float(rng.chisquare(5)),
            q=float(rng.gamma(2.0, 0.002)),
            t2_limit=15.09,
            q_limit=0.0133,
            out_of_model=bool(rng.random() < oom_rate),
        )


def drift_monitor(**settings: Any) -> tuple[DriftMonitor, CollectorRegistry]:
    """A monitor with a fresh registry and an RMSECV of 4 for the lab checks."""
    registry = CollectorRegistry()
    return DriftMonitor(DriftMetrics(registry), DriftSettings(**settings), rmsecv=4.0), registry


def feed(monitor: DriftMonitor, stream: Iterator[Prediction], batch: int = 100) -> None:
    """Feed ``stream`` to ``monitor`` in lists of ``batch``, as the consumer does."""
    items = list(stream)
    for i in range(0, len(items), batch):
        monitor.observe(items[i : i + batch])


# ---------------------------------------------------------------- CNN training


SMALL = CNNConfig(
    conv_filters=(4,), kernel_sizes=(9,), strides=(1,), pool_size=4, dense_units=(16,)
)

FAST = TrainConfig(epochs=12, batch_size=32, learning_rate=3e-3, patience=50, device="cpu")


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-component Beer–Lambert mixtures with offset, tilt, gain and noise; (X, y, wl)."""
    rng = np.random.default_rng(seed)
    wl = np.arange(1000.0, 1160.0, 2.0)
    band_a = np.exp(-0.5 * ((wl - 1060) / 12) ** 2)
    band_b = np.exp(-0.5 * ((wl - 1110) / 20) ** 2)
    c = rng.uniform(0.2, 0.8, n)
    X = c[:, None] * band_a + (1 - c)[:, None] * band_b
    u = np.linspace(-0.5, 0.5, wl.size)
    X = rng.uniform(0.9, 1.1, (n, 1)) * X + rng.normal(0, 0.05, (n, 1))
    X = X + rng.normal(0, 0.03, (n, 1)) * u + rng.normal(0, 0.002, X.shape)
    return X, 100 * c, wl


# ---------------------------------------------------------------- files and certificates


def jcamp(title: str, lines: list[str], **labels: object) -> str:
    """A JCAMP-DX file's text: ``##TITLE``, NIR labels (``labels`` add or override), XYDATA."""
    head = {"JCAMP-DX": "4.24", "DATA TYPE": "NEAR INFRARED SPECTRUM", "XUNITS": "NANOMETERS"}
    head.update({k.replace("_", " "): str(v) for k, v in labels.items()})
    out = [f"##TITLE={title}"] + [f"##{k}={v}" for k, v in head.items()]
    out += ["##XYDATA=(X++(Y..Y))", *lines, "##END="]
    return "\n".join(out) + "\n"


def write_csv(path: Path, n: int, bad_rows: tuple[int, ...] = ()) -> np.ndarray:
    """A spectra CSV (sample, assay, 50 wavelengths), ``bad_rows`` with a non-number; its X."""
    wl = np.arange(1000, 1100, 2)
    X = np.random.default_rng(0).random((n, wl.size))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample", "assay", *[str(v) for v in wl]])
        for i, row in enumerate(X):
            cells = [f"{v:.6f}" for v in row]
            if i in bad_rows:
                cells[3] = "n/a"
            w.writerow([f"row{i}", f"{190 + i}", *cells])
    return X


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key
