"""CNN training progress: one bar over the ensemble on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from builders import FAST, SMALL, synthetic

from training.cnn import fit_cnn
from training.cnn_ensemble import fit_cnn_ensemble
from training.cnn_progress import TrainingProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_ensemble_writes_plain_member_lines_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    X, y, _ = synthetic(30, seed=0)
    fit_cnn_ensemble(X, y, SMALL, train=replace(FAST, epochs=2, progress=True), n_members=3)
    err = capsys.readouterr().err
    for k in (1, 2, 3):
        assert f"CNN member {k}/3: training (at most 2 epochs)" in err, err
        assert f"CNN member {k}/3: done, best epoch" in err, err
    assert "\x1b[" not in err  # no terminal control codes in a log


def test_one_network_reports_as_member_1_of_1(capsys: pytest.CaptureFixture[str]) -> None:
    X, y, _ = synthetic(30, seed=1)
    fit_cnn(X[:24], y[:24], X[24:], y[24:], SMALL, train=replace(FAST, epochs=2, progress=True))
    assert "CNN member 1/1: done" in capsys.readouterr().err


def test_plain_epoch_lines_are_rate_limited() -> None:
    out = io.StringIO()
    with TrainingProgress(2, 50, stream=out, every_s=3600) as p:
        p.start_member(0)
        for e in range(50):
            p.epoch({"epoch": float(e), "val_rmse": 1.0})
        p.end_member(10, 0.5)
    lines = out.getvalue().splitlines()
    assert lines[0] == "CNN member 1/2: training (at most 50 epochs)"
    assert lines[-1].startswith("CNN member 1/2: done, best epoch 11, val RMSE 0.5")
    assert len(lines) == 2  # within every_s no epoch line


def test_terminal_gets_one_bar_over_all_members() -> None:
    out = Terminal()
    with TrainingProgress(5, 4, stream=out) as p:
        for k in range(5):
            p.start_member(k)
            for e in range(4):
                p.epoch({"epoch": float(e), "val_rmse": 0.1})
            p.end_member(3, 0.1)
            assert len(p._bar.tasks) == 1
            task = p._bar.tasks[0]
            assert task.fields["member"] == f"{k + 1}/5"
            assert task.completed == (k + 1) * 4 and task.total == 20
    assert "member" in out.getvalue()
