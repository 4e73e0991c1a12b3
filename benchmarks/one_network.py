"""The one-network figure beside the default ensemble's, in the same throughput run (issue 16).

:func:`one_network_bundle` copies a (benchmark, unsigned) bundle keeping only its first CNN
member, so both figures come from the same preprocessing, PLS and statistics; only the CNN
ensemble size differs. :func:`drain_phase` drains ``n`` pre-filled spectra with a worker on it,
on topics of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_worker import WorkerProcess, drain_rate, stage_summary
from safetensors.numpy import load_file, save

from nirwatch.settings import KafkaSettings
from nirwatch.transport.kafka import ensure_topics


def one_network_bundle(src: Path, dst: Path) -> Path | None:
    """A copy of bundle ``src`` at ``dst`` whose CNN is its member 0 alone (checksums redone).

    None for a signed bundle: its copy could not be signed again without the key.
    """
    if (src / "manifest.sig").exists():
        return None
    shutil.copytree(src, dst)
    arrays = load_file(str(src / "cnn.safetensors"))
    kept = {k: np.ascontiguousarray(v) for k, v in arrays.items() if k.startswith("member.0.")}
    spec = json.loads((src / "cnn.json").read_text())
    spec["meta"]["n_members"] = 1
    files = {
        "cnn.safetensors": save(kept),
        "cnn.json": json.dumps(spec, sort_keys=True, indent=1).encode(),
    }
    manifest = json.loads((src / "manifest.json").read_text())
    for name, data in files.items():
        (dst / name).write_bytes(data)
        manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1))
    return dst


def drain_phase(
    kafka: KafkaSettings,
    bundle: Path,
    args: argparse.Namespace,
    tmp: Path,
    n: int,
    prefill: Callable[[KafkaSettings, str, int], float],
) -> dict[str, Any]:
    """Drain rate, stages and peak RSS of a worker serving ``bundle`` on fresh topics."""
    tag = uuid.uuid4().hex[:6]
    own = kafka.model_copy(
        update={
            "topic_spectra": f"one{tag}.spectra",
            "topic_predictions": f"one{tag}.predictions",
            "topic_dead_letter": f"one{tag}.dlq",
        }
    )
    ensure_topics(own, [own.topic_spectra, own.topic_predictions, own.topic_dead_letter])
    prefill(own, own.topic_spectra, n)
    work = tmp / f"one-{tag}"
    work.mkdir()
    worker = WorkerProcess(own, bundle, args, work)
    try:
        before = worker.metrics()
        samples = worker.wait_for(n, timeout=600)
        out = {
            "throughput_sps": drain_rate(samples, n),
            "stages": stage_summary(before, worker.metrics()),
            "peak_rss_mb": worker.peak_rss_mb(),
        }
    finally:
        worker.stop()
    return out
