"""One reader for every command: the same bad file gets the same error from each.

``train --data``, ``retrain-service --calibration``, ``predict --data`` and ``replay --data``
all read through :func:`nirwatch.io.datasets.load_spectra`; each malformed file below is fed to
every command that reads its kind of file, through ``main()``, and must be refused with one
and the same clear message (the command's prefix aside), never a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from nirwatch.apps.cli import main
from nirwatch.settings import KafkaSettings
from training.fit import fit_bundle

WAVELENGTHS = np.arange(600.0, 700.0, 2.0)
N_ROWS = 24


def _spectra(n: int = N_ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(180.0, 220.0, n)
    band = np.exp(-(((WAVELENGTHS - 650.0) / 15.0) ** 2))
    X = 0.5 + y[:, None] * 1e-3 * band + rng.normal(0, 1e-4, (n, WAVELENGTHS.size))
    return X, y


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


def _table(target: str = "assay") -> tuple[list[str], list[list[str]]]:
    X, y = _spectra()
    header = ["SampleType", target, *(f"{w:g}" for w in WAVELENGTHS)]
    rows = [["Train", f"{v:.3f}", *(f"{a:.6f}" for a in x)] for x, v in zip(X, y, strict=True)]
    return header, rows


def nan_cell(tmp_path: Path) -> Path:
    header, rows = _table()
    rows[1][7] = "NaN"  # line 3 of the file
    return _csv(tmp_path / "nan_cell.csv", header, rows)


def text_wavelength(tmp_path: Path) -> Path:
    header, rows = _table()
    header[5] = "x606"
    return _csv(tmp_path / "text_wavelength.csv", header, rows)


def no_target(tmp_path: Path) -> Path:
    header, rows = _table(target="potency")
    return _csv(tmp_path / "no_target.csv", header, rows)


def nan_npz(tmp_path: Path) -> Path:
    X, y = _spectra()
    X[[2, 5], 10] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, wavelengths=WAVELENGTHS, assay=y)
    return tmp_path / "nan.npz"


#: (bad file, what the error must say, the commands that read it: a file without the target
#: column is bad only for the commands that need a target)
CASES: list[tuple[Callable[[Path], Path], list[str], tuple[str, ...]]] = [
    (nan_cell, ["non-finite absorbances in 1 spectra", "lines [3]"], ()),
    (text_wavelength, ["column 6 header 'x606' is not numeric", "wavelength columns"], ()),
    (nan_npz, ["non-finite absorbances in 2 spectra", "rows [2, 5]"], ()),
    (
        no_target,
        ["no target column 'assay'", "available columns", "potency"],
        ("predict", "replay"),
    ),
]
COMMANDS = ("train", "retrain-service", "predict", "replay")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PLS bundle on the files' grid, for ``predict``."""
    X, y = _spectra(40, seed=1)
    out = tmp_path_factory.mktemp("bundle") / "b"
    return fit_bundle(
        X, y, WAVELENGTHS, target="assay", unit="mg", model="pls", out_dir=out,
        cv_repeats=1, nested_cv=False,
    )  # fmt: skip


@pytest.fixture
def command_env(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    """A broker for ``replay``, a state dir for ``retrain-service``, signal handlers restored."""
    assert kafka_settings.bootstrap
    monkeypatch.setenv("NIRWATCH_KAFKA_BOOTSTRAP", kafka_settings.bootstrap)
    monkeypatch.setenv("NIRWATCH_KAFKA_TOPIC_SPECTRA", kafka_settings.topic_spectra)
    monkeypatch.setenv("NIRWATCH_KAFKA_TOPIC_DEAD_LETTER", kafka_settings.topic_dead_letter)
    monkeypatch.setenv("NIRWATCH_KAFKA_TOPIC_LAB_RESULTS", kafka_settings.topic_lab_results)
    monkeypatch.setenv("NIRWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NIRWATCH_RETRAIN_TARGET", "assay")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in handlers.items():
        signal.signal(s, h)


def _argv(command: str, data: Path, tmp_path: Path, bundle: Path) -> list[str]:
    if command == "train":
        return ["train", "--data", str(data), "--target", "assay", "--out", str(tmp_path / "b")]
    if command == "retrain-service":
        registry = str(tmp_path / "registry")
        return ["retrain-service", "--registry", registry, "--no-kafka", "--calibration", str(data)]
    if command == "predict":
        return [
            "predict",
            "--bundle",
            str(bundle),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "p"),
        ]
    return ["replay", "--data", str(data)]


@pytest.mark.kafka
@pytest.mark.parametrize(("make", "needles", "skip"), CASES, ids=[c[0].__name__ for c in CASES])
def test_every_command_refuses_a_bad_file_with_the_same_error(
    make: Callable[[Path], Path],
    needles: list[str],
    skip: tuple[str, ...],
    bundle: Path,
    command_env: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = make(tmp_path)
    messages = {}
    for command in (c for c in COMMANDS if c not in skip):
        assert main(_argv(command, data, tmp_path, bundle)) == 1, command
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        prefix = f"nirwatch {command}: error: "
        [line] = [line for line in err.splitlines() if line.startswith(prefix)]
        messages[command] = line.removeprefix(prefix)
    assert len(set(messages.values())) == 1, messages
    message = messages["train"]
    assert message.startswith(f"{data}: "), message
    for needle in needles:
        assert needle in message, message


def test_the_good_file_is_read_alike_by_training_and_retraining(tmp_path: Path) -> None:
    # The reference: the same table without a defect loads, so the errors above are the defects'.
    from nirwatch.io.datasets import load_spectra
    from training.labelled import Dataset

    header, rows = _table()
    path = _csv(tmp_path / "good.csv", header, rows)
    spectra = load_spectra(path, target="assay")
    calibration = Dataset.from_spectra(spectra)
    np.testing.assert_array_equal(calibration.X, spectra.X)
    assert spectra.y is not None
    np.testing.assert_array_equal(calibration.y, spectra.y)
    np.testing.assert_array_equal(calibration.wavelengths, WAVELENGTHS)
