"""False alarms of every alert and every drift detector on a drift-free simulated line.

A champion is fitted as in ``tests/test_drift_loop.py`` (PLS, 150 simulated calibration tablets
with their true contents) and promoted in a temporary registry. ``TabletLineSimulator`` then
runs a line without drift (``--probes`` probes at ``--rate`` spectra/s each, every
``--lab-every``-th tablet sent to the lab, its value back ``--lab-delay`` s later) for
``--minutes`` of *simulated* time, as fast as the CPU allows: each simulated second the
spectra of all probes are predicted by the loaded bundle (``LoadedBundle.predict``, as the
worker does) and counted into ``WorkerMetrics`` by the worker's own ``WorkerObserver``; the
predictions and the due lab values feed a ``DriftMonitor`` with the shipped defaults (only
``lab_sd`` set: the simulator's lab SD, since this RMSECV is against true contents), exporting
``DriftMetrics``. No broker: the delivery path is not what is measured.

Every 15 simulated seconds both registries are "scraped" (job ``nirwatch-worker`` and job
``nirwatch-drift``, as ``monitoring/prometheus/prometheus.yml``), and the committed rules
(``monitoring/rules/nirwatch.yml``, ``for:`` unchanged) are evaluated over those series by
``promtool test rules`` (Prometheus' own rule engine, every 15 s). Reported: firing episodes
per alert and label set, drift-state entries per detector and group with the largest score
each reached, and, for reference, how often the former lab limits (RMSE above 1.5 × RMSECV,
|bias| above RMSECV, from 5 pairs) would have been exceeded.

    .venv/bin/python benchmarks/drift_false_alarms.py [--minutes 30] [--probes 4] [--seed 0]
        [--rules monitoring/rules/nirwatch.yml --rules OTHER.yml]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import yaml
from prometheus_client import CollectorRegistry

from inference.observe import WorkerObserver
from monitoring.cli_drift import registry_rmsecv
from monitoring.drift_monitor import DriftMonitor, DriftSettings
from nirwatch.messages.lab_result import LabResult
from nirwatch.messages.prediction import Prediction
from nirwatch.metrics import DriftMetrics, WorkerMetrics
from nirwatch.models.bundle import load_bundle
from nirwatch.models.registry import ModelRegistry
from nirwatch.simulation.simulator import (
    ProbeSpec,
    TabletLine,
    TabletLineSimulator,
    calibration_set,
)
from training.labelled import Dataset
from training.retrain import fit_bundle_fitter

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "monitoring" / "rules" / "nirwatch.yml"
SCRAPE_S = 15
Series = dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[int, float]]


def champion(tmp: Path, model: str, **overrides: Any) -> tuple[ModelRegistry, str]:
    X, y, wl = calibration_set(150, seed=0)
    fitter = fit_bundle_fitter(target="api_content", unit="mg", model=model, **overrides)  # type: ignore[arg-type]
    registry = ModelRegistry(tmp / "registry")
    version = registry.register(fitter(Dataset(X.astype(float), y, wl), tmp / "champion"))
    registry.promote(version)
    return registry, version


def _predictions(bundle: Any, batch: Any, bp: Any, now: float) -> list[Prediction]:
    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return [
        Prediction(
            prediction_id=f"p-{sid}",
            message_id=f"m-{sid}",
            instrument_id=h.instrument_id,
            sample_id=sid,
            timestamp=now,
            published_at=now,
            target=bundle.target,
            value=num(bp.value[i]),
            model=str(bp.model[i]),
            model_version=bundle.version,
            bundle_checksum=bundle.checksum,
            product=h.product,
            fallback_reason=bp.fallback_reason[i],
            cnn_value=num(bp.cnn_value[i]),
            pls_value=num(bp.pls_value[i]),
            t2=num(bp.t2[i]),
            q=num(bp.q[i]),
            t2_limit=bp.t2_limit,
            q_limit=bp.q_limit,
            out_of_model=bool(bp.out_of_model[i]),
        )  # fmt: skip
        for i, (sid, h) in enumerate(zip(batch.sample_ids, batch.headers, strict=True))
    ]


def _scrape(series: Series, job: str, registry: CollectorRegistry, k: int) -> None:
    for family in registry.collect():
        for s in family.samples:
            if not s.name.endswith("_created") and math.isfinite(s.value):
                labels = tuple(sorted({**s.labels, "instance": f"{job}:1"}.items()))
                series.setdefault((job, s.name, labels), {})[k] = s.value


class OldLabLimits:
    """Counts entries into "RMSE > 1.5 x RMSECV or |bias| > RMSECV" (the former limits), and
    how close the current lab test came to its limits."""

    def __init__(self) -> None:
        self.entries: collections.Counter[tuple[str, str]] = collections.Counter()
        self._on: set[tuple[str, str]] = set()
        #: largest RMSE / limit and |bias| / limit of the current lab test, per group
        self.worst: dict[str, dict[str, float]] = {}

    def check(self, monitor: DriftMonitor) -> None:
        for key, lab in monitor.lab_trackers().items():
            if lab.n >= lab.min_samples:
                worst = self.worst.setdefault("/".join(key), {"rmse": 0.0, "bias": 0.0})
                worst["rmse"] = max(worst["rmse"], lab.rmse / lab.rmse_limit)
                worst["bias"] = max(worst["bias"], abs(lab.bias) / lab.bias_limit)
            on = lab.n >= 5 and (lab.rmse > 1.5 * lab.rmsecv or abs(lab.bias) > lab.rmsecv)
            if on and key not in self._on:
                self.entries[key] += 1
            (self._on.add if on else self._on.discard)(key)


def _worker_batch(parts: list[Any], product: str) -> tuple[Any, np.ndarray]:
    """What the worker's observer reads of a micro-batch (records' keys, headers)."""
    now = time.time()
    headers = [
        SimpleNamespace(instrument_id=b.instrument_id, product=product, timestamp=now)
        for b in parts
        for _ in b.sample_ids
    ]
    batch = SimpleNamespace(
        records=[SimpleNamespace(key=h.instrument_id.encode()) for h in headers],
        sample_ids=[s for b in parts for s in b.sample_ids],
        headers=headers,
    )
    return batch, np.vstack([b.spectra for b in parts])


def simulate(args: argparse.Namespace, registry: ModelRegistry) -> dict[str, Any]:
    line = TabletLine()
    bundle = load_bundle(registry.path(registry.champion_version()), device="cpu")
    worker, drift = CollectorRegistry(), CollectorRegistry()
    wm = WorkerMetrics(worker)
    observer = WorkerObserver(wm)
    observer.note_model(bundle)
    wm.broker_up.set(1)
    for p in range(args.probes):
        wm.consumer_lag.labels("nirwatch.spectra", str(p)).set(0)
    settings = DriftSettings(lab_sd=line.lab_sd_mg)
    monitor = DriftMonitor(DriftMetrics(drift), settings, rmsecv_for=registry_rmsecv(registry))
    probes = [ProbeSpec(f"probe-{i + 1}", args.rate) for i in range(args.probes)]
    sim = TabletLineSimulator(probes, seed=args.seed, line=line)
    per_second = int(round(args.rate))
    labs: collections.deque[tuple[float, LabResult]] = collections.deque()
    series: Series = {}
    detector_entries: collections.Counter[tuple[str, str, str]] = collections.Counter()
    max_score: dict[str, float] = collections.defaultdict(float)
    in_drift: set[tuple[str, str, str]] = set()
    old = OldLabLimits()
    n_labs = 0
    seconds = int(args.minutes * 60)
    for t in range(seconds + 1):
        if t % SCRAPE_S == 0:
            _scrape(series, "nirwatch-worker", worker, t // SCRAPE_S)
            _scrape(series, "nirwatch-drift", drift, t // SCRAPE_S)
        parts = [sim.next_batch(p.instrument_id, per_second) for p in probes]
        batch, spectra = _worker_batch(parts, line.product)
        bp = bundle.predict(spectra)
        observer.batch(batch, batch, bp)  # duck-typed MicroBatch and DecodedBatch
        monitor.observe(_predictions(bundle, batch, bp, float(t)))
        for b in parts:
            for sid, idx, ref in zip(b.sample_ids, b.indices, b.reference_mg, strict=True):
                if idx % args.lab_every == 0:
                    labs.append((t + args.lab_delay, LabResult(sid, float(ref), float(t))))
        due = []
        while labs and labs[0][0] <= t:
            due.append(labs.popleft()[1])
        n_labs += monitor.observe_lab(due)
        old.check(monitor)
        now_drifting = set(monitor.drifting())
        for key in now_drifting - in_drift:
            detector_entries[key] += 1
        in_drift = now_drifting
        for scores in monitor.status().values():
            for name, score in scores.items():
                max_score[name] = max(max_score[name], score)
    return {
        "series": series,
        "n_scrapes": seconds // SCRAPE_S + 1,
        "detector_entries": {"/".join(k): v for k, v in detector_entries.items()},
        "max_score": {k: round(v, 3) for k, v in sorted(max_score.items())},
        "old_lab_limit_entries": {"/".join(k): v for k, v in sorted(old.entries.items())},
        "lab_test_worst": {
            k: {m: round(v, 3) for m, v in w.items()} for k, w in sorted(old.worst.items())
        },
        "spectra": seconds * per_second * args.probes,
        "lab_values": n_labs,
        "settings": settings.model_dump(
            include={
                "lab_sd",
                "lab_alpha",
                "cusum_arl0",
                "page_hinkley_arl0",
                "exceedance_alpha",
                "mean_shift_alpha",
                "warmup",
            }
        ),  # fmt: skip
        "rmsecv": drift.get_sample_value("nirwatch_model_rmsecv"),
    }


def _series_yaml(series: Series, n: int) -> list[dict[str, str]]:
    out = []
    for (job, name, labels), values in sorted(series.items()):
        body = ",".join(f'{k}="{v}"' for k, v in (("job", job), *labels))
        vals = " ".join(f"{values[k]:.10g}" if k in values else "_" for k in range(n))
        out.append({"series": f"{name}{{{body}}}", "values": vals})
    for job in ("nirwatch-worker", "nirwatch-drift"):
        out.append({"series": f'up{{job="{job}",instance="{job}:1"}}', "values": f"1x{n - 1}"})
    return out


def _seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(v) * units[u] for v, u in re.findall(r"(\d+)([hms])", duration))


def evaluate_rules(
    series: Series, n: int, tmp: Path, rules_path: Path = RULES, step_s: int = 15
) -> dict[str, Any]:
    """Firing alerts at every ``step_s`` by ``promtool test rules``; episodes per label set."""
    alerts = [
        r["alert"]
        for g in yaml.safe_load(rules_path.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    ]
    end = (n - 1) * SCRAPE_S
    test = {
        "rule_files": [str(rules_path.resolve())],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": f"{SCRAPE_S}s",
                "input_series": _series_yaml(series, n),
                "alert_rule_test": [
                    {"eval_time": f"{t}s", "alertname": a, "exp_alerts": []}
                    for t in range(step_s, end + 1, step_s)
                    for a in alerts
                ],
            }
        ],
    }
    path = tmp / "false_alarms_test.yml"
    path.write_text(yaml.safe_dump(test, width=1 << 30))
    out = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    text = out.stdout + out.stderr
    if out.returncode != 0 and "alertname:" not in text:
        raise RuntimeError(f"promtool failed:\n{text[-3000:]}")
    firing: dict[str, list[int]] = collections.defaultdict(list)
    for block in re.split(r"\n\s*alertname: ", text)[1:]:
        name, when = re.match(r"(\w+), time: (\w+),", block).groups()  # type: ignore[union-attr]
        got = block.split("got:", 1)[1] if "got:" in block else ""
        for labels in set(re.findall(r"Labels:(\{[^}]*\})", got)):
            firing[labels].append(_seconds(when))
    episodes: collections.Counter[str] = collections.Counter()
    firing_s: collections.Counter[str] = collections.Counter()
    for labels, times in firing.items():
        times.sort()
        name = re.search(r'alertname="(\w+)"', labels).group(1)  # type: ignore[union-attr]
        episodes[labels] += 1 + sum(b - a > step_s for a, b in zip(times, times[1:], strict=False))
        firing_s[name] += len(times) * step_s
    return {
        "alerts": alerts,
        "episodes": dict(episodes),
        "firing_seconds": dict(firing_s),
        "evaluations": len(range(step_s, end + 1, step_s)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2.0, help="spectra/s per probe (integer)")
    parser.add_argument("--lab-every", type=int, default=5)
    parser.add_argument("--lab-delay", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="pls", choices=["pls", "both"])
    parser.add_argument("--cnn-members", type=int, help="CNN ensemble size (--model both)")
    parser.add_argument("--epochs", type=int, help="CNN epochs (--model both)")
    parser.add_argument(
        "--rules", type=Path, action="append", help="rule files to evaluate (default: committed)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        overrides = {"cnn_members": args.cnn_members, "epochs": args.epochs}
        registry, version = champion(
            tmp, args.model, **{k: v for k, v in overrides.items() if v is not None}
        )
        print(f"champion {version} fitted in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        result = simulate(args, registry)
        print(
            f"simulated {args.minutes:g} min in {time.perf_counter() - t0:.1f} s", file=sys.stderr
        )
        t0 = time.perf_counter()
        series = result.pop("series")
        rules = {
            str(path): evaluate_rules(series, result["n_scrapes"], tmp, path)
            for path in (args.rules or [RULES])
        }
        print(f"promtool evaluated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    summary = {"args": {**vars(args), "rules": None}, **result, "rules": rules}
    print("DRIFT-FALSE-ALARMS " + json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
