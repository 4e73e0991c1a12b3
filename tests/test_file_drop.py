"""The file-drop adapter: which files it takes, what it publishes, where the files go."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from builders import jcamp
from prometheus_client import CollectorRegistry
from support import read_topic

from ingest.file_drop import DropStats, Inbox, read_rows, take_file, watch_inbox
from ingest.producer import SpectrumProducer
from ingest.settings import IngestSettings
from nirwatch.errors import DataError
from nirwatch.grid import wavelengths as grid_wavelengths
from nirwatch.messages.deadletter import read_dead_letters
from nirwatch.messages.spectrum import decode_spectrum
from nirwatch.metrics import FileDropMetrics
from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics, make_producer

GRID = "lin:600:1898:2"
WL = grid_wavelengths(GRID)


def spectra(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = 0.3 + 0.2 * np.exp(-(((WL - 1450.0) / 60.0) ** 2))
    return base + rng.normal(0, 0.01, (n, WL.size))


def write_csv(path: Path, X: np.ndarray, **columns: list[object]) -> Path:
    head = [*columns, *(f"{w:g}" for w in WL)]
    lines = [",".join(head)]
    for i, row in enumerate(X):
        cells = [str(v[i]) for v in columns.values()]
        cells += ["" if np.isnan(v) else f"{v:.6f}" for v in row]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_inbox_takes_settled_visible_files_oldest_first(tmp_path: Path) -> None:
    clock = FakeClock()
    inbox = Inbox(tmp_path, settle_s=2.0, clock=clock)
    a = write_csv(tmp_path / "a.csv", spectra(1))
    b = tmp_path / "b.npz"
    np.savez(b, X=spectra(2), wavelengths=WL)
    os.utime(a, (200, 200))
    os.utime(b, (100, 100))
    for name in (".hidden.csv", "c.csv.tmp", "d.part", "notes.txt"):
        (tmp_path / name).write_text("x")
    outside = write_csv(tmp_path.parent / f"{tmp_path.name}-secret.csv", spectra(1))
    (tmp_path / "link.csv").symlink_to(outside)  # never followed
    assert inbox.ready() == [] and inbox.settling == 2  # first sight: settling
    assert inbox.waiting == 2 and inbox.oldest_mtime == 100.0  # b.npz's time
    clock.now = 1.0
    assert inbox.ready() == []
    with a.open("a") as f:  # the instrument is still writing a.csv
        f.write("\n")
    os.utime(a, (300, 300))
    clock.now = 2.5
    assert inbox.ready() == [b] and inbox.settling == 1
    clock.now = 4.0
    assert inbox.ready() == [b]  # b settled first; a changed at 2.5 s, not yet 2 s ago
    clock.now = 4.6
    assert inbox.ready() == [b, a]  # oldest modification time first
    moved = inbox.move(b, inbox.done)
    assert moved == tmp_path / "done" / "b.npz"
    np.savez(b, X=spectra(1), wavelengths=WL)
    assert inbox.move(b, inbox.done) == tmp_path / "done" / "b-1.npz"  # never overwrites
    with pytest.raises(DataError, match="not a directory"):
        Inbox(tmp_path / "missing")


def test_rows_carry_the_files_columns_and_stable_message_ids(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "run.csv",
        spectra(3),
        instrument_id=[7, 7, 8],
        sample_id=["s-1", "s-2", "s-3"],
        timestamp=[1.7e9, 1.7e9 + 1, 1.7e9 + 2],
    )
    rows = list(read_rows(path, instrument_id="default", product="tab", batch="b1"))
    again = list(read_rows(path, instrument_id="default", product="tab", batch="b1"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    assert [h.message_id for h, _ in rows] == [f"{digest}{i:012x}" for i in range(3)]
    assert [h.message_id for h, _ in again] == [h.message_id for h, _ in rows]
    assert [h.instrument_id for h, _ in rows] == ["7", "7", "8"]
    assert [h.sample_id for h, _ in rows] == ["s-1", "s-2", "s-3"]
    assert rows[2][0].timestamp == 1.7e9 + 2 and rows[0][0].grid == GRID
    assert rows[0][0].product == "tab" and rows[0][0].extra == {"file": "run.csv"}
    np.testing.assert_allclose(rows[1][1], spectra(3)[1], atol=1e-6)
    # Without those columns: the adapter's instrument, file-derived sample ids, file time.
    npz = tmp_path / "plain.npz"
    np.savez(npz, X=spectra(2), wavelengths=WL)
    os.utime(npz, (1234.5, 1234.5))
    plain = list(read_rows(npz, instrument_id="line-3", product="", batch=""))
    assert [h.sample_id for h, _ in plain] == ["plain-00000", "plain-00001"]
    assert {h.instrument_id for h, _ in plain} == {"line-3"}
    assert {h.timestamp for h, _ in plain} == {1234.5}


@pytest.fixture
def settings(kafka_settings: KafkaSettings) -> IngestSettings:
    ensure_topics(kafka_settings, [kafka_settings.topic_spectra, kafka_settings.topic_dead_letter])
    return IngestSettings(kafka=kafka_settings)


def test_file_drop_publishes_rows_dead_letters_bad_ones_and_moves_files(
    settings: IngestSettings, tmp_path: Path
) -> None:
    inbox_dir = tmp_path / "line-3"
    inbox_dir.mkdir()
    good = write_csv(inbox_dir / "good.csv", spectra(4, seed=1))
    X = spectra(3, seed=2)
    X[1, 10] = np.nan  # an empty cell: that row alone is dead-lettered
    write_csv(inbox_dir / "mixed.csv", X)
    junk = b"\x00\x01 not a spectrum"
    (inbox_dir / "junk.csv").write_bytes(junk)
    (inbox_dir / "pending.csv.tmp").write_text("still being written")
    write_csv(inbox_dir / "when.csv", spectra(1), timestamp=["yesterday"])  # not a time
    good_bytes = good.read_bytes()
    inbox = Inbox(inbox_dir, settle_s=0.0)
    registry = CollectorRegistry()
    metrics = FileDropMetrics(registry)
    with SpectrumProducer(settings, source="file-drop:line-3", expected_grid=GRID) as producer:
        stats = watch_inbox(
            inbox,
            producer,
            stop=threading.Event(),
            instrument_id="line-3",
            once=True,
            metrics=metrics,
        )
    assert stats == DropStats(files_done=2, files_failed=2, sent=6, dead_lettered=3)
    value = registry.get_sample_value
    assert value("nirwatch_file_drop_files_total", {"outcome": "done"}) == 2
    assert value("nirwatch_file_drop_files_total", {"outcome": "failed"}) == 2
    assert value("nirwatch_file_drop_files_total", {"outcome": "retry"}) == 0
    assert value("nirwatch_file_drop_spectra_total", {"result": "sent"}) == 6
    assert value("nirwatch_file_drop_spectra_total", {"result": "dead_lettered"}) == 3
    # The last pass found the inbox empty (the .tmp file does not count).
    assert value("nirwatch_file_drop_inbox_files") == 0
    assert value("nirwatch_file_drop_oldest_file_age_seconds") == 0
    assert sorted(p.name for p in (inbox_dir / "done").iterdir()) == ["good.csv", "mixed.csv"]
    assert sorted(p.name for p in (inbox_dir / "failed").iterdir()) == [
        "junk.csv",
        "junk.csv.reason.txt",
        "when.csv",
        "when.csv.reason.txt",
    ]
    assert "ValueError" in (inbox_dir / "failed" / "when.csv.reason.txt").read_text()
    assert "junk.csv" in (inbox_dir / "failed" / "junk.csv.reason.txt").read_text()
    assert (inbox_dir / "pending.csv.tmp").exists()  # never taken while named .tmp

    kafka = settings.kafka
    records = read_topic(kafka, kafka.topic_spectra, 6)
    decoded = [decode_spectrum(r.value)[0] for r in records]
    assert len(decoded) == 6 and all(r.key == b"line-3" for r in records)
    digest = hashlib.sha256(good_bytes).hexdigest()[:20]
    good_ids = {f"{digest}{i:012x}" for i in range(4)}
    assert good_ids <= {h.message_id for h in decoded}
    assert {h.sample_id for h in decoded} == {f"good-{i:05d}" for i in range(4)} | {
        "mixed-00000",
        "mixed-00002",
    }
    letters = read_dead_letters(kafka, expected=3)
    assert sorted(d.reason for d in letters) == ["bad_file", "bad_file", "non_finite"]
    [bad] = [d for d in letters if "junk.csv" in d.detail]
    assert bad.reason == "bad_file" and bad.value == junk and bad.stage == "ingest"

    # The same file dropped again gives the same message ids: duplicates are traceable.
    shutil.copy(inbox_dir / "done" / "good.csv", inbox_dir / "good.csv")
    with SpectrumProducer(settings, source="file-drop:line-3") as producer:
        again = watch_inbox(
            inbox, producer, stop=threading.Event(), instrument_id="line-3", once=True
        )
    assert again.files_done == 1 and (inbox_dir / "done" / "good-1.csv").exists()
    ids = [
        decode_spectrum(r.value)[0].message_id for r in read_topic(kafka, kafka.topic_spectra, 10)
    ]
    assert len(ids) == 10 and all(ids.count(i) == 2 for i in good_ids)


def test_file_stays_in_the_inbox_while_the_broker_is_unreachable(
    settings: IngestSettings, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap="127.0.0.1:9")  # nothing listens there
    path = write_csv(tmp_path / "run.csv", spectra(2))
    inbox = Inbox(tmp_path, settle_s=0.0)
    stats = DropStats()
    # kafka-python waits 30 s to bootstrap by default; 1 s shows the same failure.
    producer = SpectrumProducer(
        IngestSettings(kafka=kafka),
        source="file-drop:test",
        producer_factory=lambda: make_producer(kafka, bootstrap_timeout_ms=1000),
    )
    assert take_file(path, inbox, producer, stats, instrument_id="p1") == "retry"
    assert path.exists() and not any((tmp_path / "done").iterdir())
    assert stats.files_retried == 1 and stats.files_done == 0
    # Once a broker answers, the same file goes through.
    with SpectrumProducer(settings, source="file-drop:test") as working:
        assert take_file(path, inbox, working, stats, instrument_id="p1") == "done"
    assert not path.exists() and (tmp_path / "done" / "run.csv").exists()
    assert len(read_topic(settings.kafka, settings.kafka.topic_spectra, 2)) == 2


def test_jcamp_exports_are_read_with_their_axis_unit(tmp_path: Path) -> None:
    path = tmp_path / "ft.jdx"
    path.write_text(
        jcamp(
            "ft-nir",
            ["9000 1 2 3 4"],
            XUNITS="1/CM",
            FIRSTX=9000,
            LASTX=6000,
            NPOINTS=4,
            **{"$SAMPLE_ID": "S-9"},
        )
    )
    [(h, x)] = list(read_rows(path, instrument_id="ft-1", product="", batch=""))
    assert h.sample_id == "S-9" and h.grid == "lin:6000:9000:1000"
    assert h.extra == {"file": "ft.jdx", "axis_unit": "cm-1"}
    np.testing.assert_allclose(x, [4, 3, 2, 1])
