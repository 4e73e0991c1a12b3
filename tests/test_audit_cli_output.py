"""``nirwatch audit`` output a person can rely on (issue 13, item 6), and ``--batch`` on the
adapters that put batch ids on spectra."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import publication, write_csv
from support import read_topic

from nirwatch.apps.cli import build_parser, main
from nirwatch.apps.cli_audit import run
from nirwatch.messages.spectrum import decode_spectrum
from nirwatch.records.audit import SQLiteAuditTrail, audit_records
from nirwatch.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[1]


def _trail(path: Path, n: int, **kw: object) -> SQLiteAuditTrail:
    trail = SQLiteAuditTrail(path)
    pubs = [publication(f"probe-1-{i:012d}", **kw) for i in range(n)]
    trail.append_many(audit_records([p for p, _ in pubs], [r for _, r in pubs]))
    return trail


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    out = io.StringIO()
    rc = run(build_parser("audit").parse_args(["audit", *argv]), out)
    return rc, out.getvalue(), capsys.readouterr().err


def test_table_prints_ids_and_versions_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = "20261202T041500Z-3f9c2a"
    trail = _trail(tmp_path / "a.sqlite3", 2, model_version=version, instrument="line-3-probe-12")
    rc, text, _ = _cli(["--db", str(trail.path)], capsys)
    lines = text.splitlines()
    assert rc == 0 and lines[-1] == "2 record(s)"
    for i, line in enumerate(lines[1:3]):
        assert f"probe-1-{i:012d}" in line and version in line and "line-3-probe-12" in line
    assert lines[0].split()[:4] == ["published_at", "instrument", "sample", "batch"]
    trail.close()


def test_a_cut_list_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trail = _trail(tmp_path / "a.sqlite3", 5)
    rc, text, _ = _cli(["--db", str(trail.path), "--limit", "3"], capsys)
    assert rc == 0 and len(text.splitlines()) == 1 + 3 + 1
    assert text.splitlines()[-1].startswith("3 record(s); showing the first 3")
    assert "--limit 0 for all" in text

    rc, text, err = _cli(["--db", str(trail.path), "--limit", "3", "--json"], capsys)
    assert len(text.splitlines()) == 3 and "--limit 0 for all" in err  # JSON lines stay clean

    for argv in (["--limit", "5"], ["--limit", "0"]):  # nothing more: no note
        rc, text, err = _cli(["--db", str(trail.path), *argv], capsys)
        assert text.splitlines()[-1] == "5 record(s)" and not err
    trail.close()


def test_duplicates_says_when_there_are_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = _trail(tmp_path / "a.sqlite3", 3)
    rc, text, _ = _cli(["--db", str(trail.path), "--duplicates"], capsys)
    assert (
        rc == 0 and text.strip() == "no duplicates: each of the 3 record(s) has its own message id"
    )
    rc, text, err = _cli(["--db", str(trail.path), "--duplicates", "--json"], capsys)
    assert text == "" and "no duplicates" in err

    again = publication("s", message_id="m-1")
    trail.append_many(audit_records([again[0]], [again[1]]))
    redelivered = publication("s", message_id="m-1")
    trail.append_many(audit_records([redelivered[0]], [redelivered[1]]))
    rc, text, _ = _cli(["--db", str(trail.path), "--duplicates"], capsys)
    assert text.strip() == "m-1 2"
    trail.close()


def test_piping_into_head_is_quiet(tmp_path: Path) -> None:
    """A reader that stops early (``| head``) ends the command quietly, rc 0, no traceback."""
    trail = _trail(tmp_path / "a.sqlite3", 3000)  # ~600 kB of table: more than a pipe holds
    trail.close()
    err = tmp_path / "err.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = f"'{sys.executable}' -m nirwatch.apps.cli audit --db '{trail.path}' --limit 0 2>'{err}' | head -n 2"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert len(done.stdout.splitlines()) == 2
    assert err.read_text() == "" and done.returncode == 0


@pytest.mark.kafka
@pytest.mark.parametrize("command", ["simulate", "replay"])
def test_batch_flag_puts_the_batch_on_every_spectrum(
    command: str,
    cli_env: KafkaSettings,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    if command == "simulate":
        argv = ["simulate", "--probes", "1", "--rate", "40", "--duration", "0.25"]
    else:
        write_csv(tmp_path / "d.csv", 10)
        argv = ["replay", "--data", str(tmp_path / "d.csv"), "--rate", "500"]
    assert main([*argv, "--batch", "LOT-2026-0042", "--product", "tablet-100mg"]) == 0
    records = read_topic(cli_env, cli_env.topic_spectra, 10)
    headers = [decode_spectrum(r.value)[0] for r in records]
    assert {(h.batch, h.product) for h in headers} == {("LOT-2026-0042", "tablet-100mg")}


@pytest.mark.parametrize("command", ["simulate", "replay", "file-drop"])
def test_batch_flag_is_offered_by_every_adapter(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    helptext = capsys.readouterr().out
    assert "--batch BATCH" in helptext and "NIRWATCH_INGEST_BATCH" in helptext
