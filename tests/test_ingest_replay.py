from __future__ import annotations

import csv
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from builders import write_csv
from support import read_topic

from ingest.producer import SpectrumProducer
from ingest.replay import load_dataset, load_fermentation, load_file, replay_rows
from ingest.settings import IngestSettings
from ingest.streaming import stream_rows
from nirwatch.apps.cli import main
from nirwatch.errors import DataError
from nirwatch.messages.deadletter import read_dead_letters
from nirwatch.messages.lab_result import decode_lab_result
from nirwatch.messages.spectrum import decode_spectrum
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics


def test_shootout_csv_is_read_on_its_grid(shootout_csv: Path) -> None:
    ds = load_dataset(str(shootout_csv))
    assert ds.grid == "lin:600:1898:2" and ds.spectra.shape == (655, 650)
    assert ds.metadata[0]["SampleType"] == "Train" and isinstance(ds.metadata[0]["assay"], float)
    assert np.isfinite(ds.spectra).all()


def test_fermentation_resampled_onto_even_grid_keeps_values() -> None:
    from chemotools.datasets import _base

    ds = load_fermentation()
    assert ds.grid == "lin:428:1833:1" and ds.axis_unit == "cm-1"
    assert ds.spectra.shape == (1629, 1406)
    raw = Path(_base.PACKAGE_DIRECTORY) / "data" / "fermentation_spectra.csv"
    with raw.open() as f:
        axis = np.array(next(csv.reader(f)), dtype=float)
    first = np.loadtxt(raw, delimiter=",", skiprows=1, max_rows=1)
    # Original wavenumbers are integers, all on the new grid: values there are unchanged.
    idx = (axis - 428).astype(int)
    np.testing.assert_allclose(ds.spectra[0, idx], first, rtol=1e-6)
    # Spectra in time order; the 34 nearest an HPLC sample carry its reference values.
    times = [float(m["time_h"]) for m in ds.metadata]  # type: ignore[arg-type]
    assert times == sorted(times)
    labelled = [m for m in ds.metadata if "glucose" in m]
    assert len(labelled) == 34 and labelled[0]["glucose"] == pytest.approx(44.41567094)
    _, _, _, meta = next(replay_rows(ds, ["f1"]))
    assert meta["axis_unit"] == "cm-1" and meta["time_h"] == 0.0


def test_files_are_validated_by_datasets(tmp_path: Path) -> None:
    write_csv(tmp_path / "bad.csv", 10, bad_rows=(7,))
    with pytest.raises(DataError, match=r"non-finite absorbances in 1 spectra, lines \[9\]"):
        load_file(tmp_path / "bad.csv")
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 4)), wavelengths=np.arange(5.0))
    with pytest.raises(DataError, match="shape"):
        load_file(tmp_path / "bad.npz")
    np.savez(
        tmp_path / "ok.npz",
        X=np.ones((3, 5)),
        wavelengths=np.arange(600.0, 610, 2),
        batch=np.array(["a", "b", "c"]),
    )
    ds = load_file(tmp_path / "ok.npz")
    assert ds.grid == "lin:600:608:2" and len(ds) == 3
    assert [m["batch"] for m in ds.metadata] == ["a", "b", "c"]
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.csv"))


def test_uneven_axis_is_resampled_onto_a_grid(tmp_path: Path) -> None:
    wl = np.array([600.0, 601.0, 603.0, 604.0, 606.0, 607.0])
    np.savez(tmp_path / "u.npz", X=np.vstack([wl, 2 * wl]), wavelengths=wl)
    ds = load_file(tmp_path / "u.npz")
    assert ds.grid == "lin:600:607:1"
    np.testing.assert_allclose(ds.spectra[1], 2 * np.arange(600.0, 608.0))


def test_replay_rows_round_robin_and_loop(tmp_path: Path) -> None:
    write_csv(tmp_path / "d.csv", 3)
    ds = load_file(tmp_path / "d.csv")
    rows = replay_rows(ds, ["a", "b"], loop=True)
    got = [(i, s) for i, s, _, _ in (next(rows) for _ in range(7))]
    assert got == [
        ("a", "d-00000"),
        ("b", "d-00001"),
        ("a", "d-00002"),
        ("b", "d-00000-r1"),
        ("a", "d-00001-r1"),
        ("b", "d-00002-r1"),
        ("a", "d-00000-r2"),
    ]


@pytest.mark.kafka
def test_replay_keeps_file_order_per_instrument_and_rate(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    ensure_topics(
        kafka_settings,
        [kafka_settings.topic_spectra, kafka_settings.topic_dead_letter],
    )
    n, rate = 40, 200.0
    X = write_csv(tmp_path / "d.csv", n)
    ds = load_file(tmp_path / "d.csv")
    ds.spectra[7, 3] = np.inf  # a glitch in the stream: dead-lettered at the edge
    settings = IngestSettings(kafka=kafka_settings)
    with SpectrumProducer(settings, source="replay:d") as producer:
        stats = stream_rows(
            replay_rows(ds, ["i1", "i2", "i3"]),
            ds.grid,
            producer,
            rate_hz=rate,
            stop=threading.Event(),
        )
    assert stats.sent == n - 1 and stats.dead_lettered == 1
    records = read_topic(kafka_settings, kafka_settings.topic_spectra, n - 1)
    per_instrument: dict[str, list[int]] = defaultdict(list)
    stamps = []
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        head, values = decode_spectrum(rec.value, ds.grid)
        row = int(head.sample_id.split("-")[1])
        per_instrument[head.instrument_id].append(row)
        np.testing.assert_allclose(values, X[row], atol=1e-6)
        assert head.extra == {"sample": f"row{row}", "assay": 190.0 + row}
        stamps.append(head.timestamp)
    expected = {f"i{k + 1}": [r for r in range(k, n, 3) if r != 7] for k in range(3)}
    assert dict(per_instrument) == expected
    # Paced by schedule: never faster than the rate (row 39 is due 39/rate after row 0).
    assert max(stamps) - min(stamps) >= (n - 1) / rate - 0.005
    (letter,) = read_dead_letters(kafka_settings, expected=1)
    assert letter.reason == "non_finite" and letter.source == "replay:d"


@pytest.mark.kafka
def test_cli_replay_with_lab_results(
    cli_env: KafkaSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tmp_path / "d.csv", 12)
    argv = ["replay", "--data", str(tmp_path / "d.csv"), "--rate", "500"]
    assert main([*argv, "--lab-target", "assay", "--lab-unit", "mg"]) == 0
    assert "sent 12 spectra" in capsys.readouterr().out
    labs = [decode_lab_result(r.value) for r in read_topic(cli_env, cli_env.topic_lab_results, 12)]
    assert sorted((lab.sample_id, lab.value) for lab in labs) == [
        (f"d-{i:05d}", 190.0 + i) for i in range(12)
    ]
    assert {(lab.target, lab.unit, lab.method) for lab in labs} == {("assay", "mg", "hplc")}


@pytest.mark.kafka
def test_cli_simulate_probes_and_drift(
    cli_env: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--probes", "2", "--rate", "40", "--duration", "0.5"]
    assert main([*argv, "--drift", "baseline", "--drift-at", "0.25", "--lab-results"]) == 0
    out = capsys.readouterr().out
    assert "sent 40 spectra" in out and "4 lab results" in out
    records = read_topic(cli_env, cli_env.topic_spectra, 40)
    assert {r.key for r in records} == {b"probe-1", b"probe-2"}
