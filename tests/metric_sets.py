"""Which process (scrape job) exports which metric, from the metric classes themselves.

Used by the rule and dashboard tests: every PromQL selector of a per-process metric must name
the job of the process that exports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from nirwatch.metrics import (
    DriftMetrics,
    FileDropMetrics,
    OpcUaServerMetrics,
    RetrainMetrics,
    WorkerMetrics,
)

#: Scrape job (monitoring/prometheus/prometheus.yml) -> the metric set its process exports.
JOBS: dict[str, Callable[[CollectorRegistry], object]] = {
    "nirwatch-worker": WorkerMetrics,
    "nirwatch-drift": DriftMetrics,
    "nirwatch-file-drop": FileDropMetrics,
    "nirwatch-retrain": RetrainMetrics,
    "nirwatch-opcua": OpcUaServerMetrics,
}
_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
_SELECTOR = re.compile(r"\b(nirwatch_[a-z0-9_]+)\s*(\{[^}]*\})?")
_JOB = re.compile(r'\bjob\s*=\s*"([^"]+)"')


def exported(make: Callable[[CollectorRegistry], object]) -> set[str]:
    """Sample names a metric set exports (``_total`` of counters, ``_bucket`` of histograms...)."""
    registry = CollectorRegistry()
    make(registry)
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in _SUFFIXES.get(family.type, [""])
    }


def job_of_each_selector(expr: str) -> list[tuple[str, str | None]]:
    """``(metric, job)`` for every nirwatch metric selector in ``expr`` (job None if absent)."""
    out = []
    for m in _SELECTOR.finditer(expr):
        job = _JOB.search(m.group(2) or "")
        out.append((m.group(1), job.group(1) if job else None))
    return out


def misselected(expr: str) -> list[str]:
    """Selectors of ``expr`` without a job, or with a job whose process lacks the metric."""
    sets = {job: exported(make) for job, make in JOBS.items()}
    problems = []
    for metric, job in job_of_each_selector(expr):
        if job is None:
            problems.append(f"{metric} selects no job")
        elif metric not in sets.get(job, set()):
            problems.append(f"{metric} is not exported by job {job}")
    return problems
