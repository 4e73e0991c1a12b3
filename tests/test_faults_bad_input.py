"""Bad input mixed into a full stream: every bad message dead-lettered, every good one predicted.

The same worker drains a clean backlog and a backlog with one malformed message (of every
kind the decoder refuses) after every ten good spectra. Both runs are timed and the rate of
good spectra is printed (``-s``) for docs/results/reliability.md; nothing asserts on time.
"""

from __future__ import annotations

import collections
import sys
import time

import numpy as np
from support import read_predictions, wait_until
from worker_support import (
    committed_total,
    malformed,
    produce,
    spectra_messages,
    start_worker,
    worker_settings,
)

from nirwatch.messages.deadletter import read_dead_letters
from nirwatch.settings import KafkaSettings

N_GOOD = 6000
INSTRUMENTS = [f"probe-{i}" for i in range(6)]


def _drain(kafka: KafkaSettings, messages: list[tuple[str | None, bytes | None]]) -> float:
    """Seconds for a fresh worker to commit a pre-filled backlog."""
    produce(kafka, messages)
    settings = worker_settings(kafka, micro_batch_size=1000)
    w = start_worker(settings)
    t0 = time.monotonic()
    wait_until(lambda: committed_total(kafka, settings.group_id) == len(messages), 180, "the drain")
    elapsed = time.monotonic() - t0
    w.halt()
    return elapsed


def test_bad_messages_are_dead_lettered_while_good_ones_flow_at_full_rate(
    kafka_settings: KafkaSettings,
) -> None:
    clean_kafka = kafka_settings.model_copy(
        update={f"topic_{t}": f"{getattr(kafka_settings, f'topic_{t}')}.clean"
                for t in ("spectra", "predictions", "dead_letter")}
    )  # fmt: skip
    clean = spectra_messages(N_GOOD, INSTRUMENTS, seed=5)
    t_clean = _drain(clean_kafka, [(k, v) for k, v, _ in clean])

    good = spectra_messages(N_GOOD, INSTRUMENTS, seed=6)
    kinds = list(malformed(good[0][1]).items())
    rng = np.random.default_rng(0)
    messages: list[tuple[str | None, bytes | None]] = []
    sent_bad: collections.Counter[str] = collections.Counter()
    for i, (k, v, _) in enumerate(good):
        messages.append((k, v))
        if i % 10 == 9:
            reason, raw = kinds[int(rng.integers(len(kinds)))]
            messages.append((k, raw))
            sent_bad[reason.removesuffix("_inf")] += 1
    t_dirty = _drain(kafka_settings, messages)

    preds = read_predictions(kafka_settings, expected=N_GOOD, timeout_s=60)
    assert collections.Counter(p.message_id for p in preds) == collections.Counter(
        h.message_id for _, _, h in good
    )
    n_bad = sum(sent_bad.values())
    letters = read_dead_letters(kafka_settings, expected=n_bad, timeout_s=60)
    assert collections.Counter(d.reason for d in letters) == sent_bad
    clean_rate, dirty_rate = N_GOOD / t_clean, N_GOOD / t_dirty
    print(
        f"\nbad input mixed in: {n_bad} bad among {N_GOOD} good ({dict(sent_bad)}); good spectra "
        f"per second clean {clean_rate:.0f}, with bad input {dirty_rate:.0f} "
        f"(ratio {dirty_rate / clean_rate:.2f})",
        file=sys.stderr,
    )
