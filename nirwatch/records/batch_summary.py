"""A production batch's content uniformity from its audited predictions (real-time release).

Reads what was published (the audit trail), never recomputes a prediction. Redeliveries
(at-least-once) are counted once: the latest publication of each message id stands. Only
releasable predictions (inside the applicability domain and the calibrated range, with a
value) enter the statistics; the rest are counted by why they are not releasable.

Uniformity of dosage units (Ph. Eur. 2.9.40 / USP <905>), in % of label claim:
the acceptance value is ``AV = |M − X̄| + k·s`` with the reference value ``M = X̄`` clipped
to [98.5, 101.5] (target content T ≤ 101.5 %). ``k`` depends on the number of units and, for
large samples from PAT, on the table of Ph. Eur. 2.9.47 (Alternative 1): it is not built in,
the user passes the one that applies (``--k``). The numbers of units outside 85–115 % and
75–125 % of label claim are reported as counts of label claim; how they map onto a
pharmacopoeia's counting criteria (c1, c2, and the reference they are taken against) and the
pass/fail decision stay with QA.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nirwatch.errors import DataError
from nirwatch.records.audit import AuditRecord


@dataclass(frozen=True)
class BatchSummary:
    """Content uniformity of one batch (contents in the target's unit and in % label claim)."""

    batch: str
    products: list[str]
    target: str
    unit: str
    label_claim: float
    units: int
    publications: int
    releasable: int
    out_of_model: int
    held: int
    mean: float | None
    sd: float | None
    mean_pct: float | None
    rsd_pct: float | None
    min: float | None
    max: float | None
    outside_85_115: int
    outside_75_125: int
    reference_value_pct: float | None
    k: float | None
    acceptance_value: float | None
    models: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, int] = field(default_factory=dict)
    first_timestamp: float | None = None
    last_timestamp: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def latest_per_message(records: Iterable[AuditRecord]) -> tuple[list[AuditRecord], int]:
    """The last publication of each message id (append order), and the number read."""
    latest: dict[str, AuditRecord] = {}
    n = 0
    for r in records:
        latest[r.message_id] = r
        n += 1
    return list(latest.values()), n


def summarize_batch(
    records: Iterable[AuditRecord], *, label_claim: float, k: float | None = None
) -> BatchSummary:
    """Summarise the audited predictions of one batch.

    Parameters
    ----------
    records : iterable of AuditRecord
        The batch's publications, in append order (redeliveries included).
    label_claim : float
        Declared content per unit, in the target's unit (e.g. 200 for a 200 mg tablet).
    k : float, optional
        Acceptability constant for the acceptance value (from the pharmacopoeial table for
        this number of units); no acceptance value without it.

    Raises
    ------
    DataError
        No records, records of several batches or targets, or a label claim that is not
        positive.
    """
    if not (label_claim > 0 and math.isfinite(label_claim)):
        raise DataError(f"label claim must be a positive number, got {label_claim}")
    units, n_pub = latest_per_message(records)
    if not units:
        raise DataError("no audited predictions for this batch")
    for what in ("batch", "target", "unit"):
        seen = sorted({getattr(r, what) for r in units})
        if len(seen) > 1:
            raise DataError(f"records of more than one {what}: {seen[:5]}")
    rel = [r for r in units if r.releasable and r.value is not None]
    values = np.array([r.value for r in rel], dtype=np.float64)
    pct = 100.0 * values / label_claim
    mean = float(values.mean()) if values.size else None
    sd = float(values.std(ddof=1)) if values.size > 1 else None
    mean_pct = float(pct.mean()) if values.size else None
    m_ref = av = None
    if mean_pct is not None and sd is not None:
        m_ref = min(max(mean_pct, 98.5), 101.5)
        if k is not None:
            av = abs(m_ref - mean_pct) + k * float(pct.std(ddof=1))
    stamps = [r.timestamp for r in units]
    return BatchSummary(
        batch=units[0].batch,
        products=sorted({r.product for r in units}),
        target=units[0].target,
        unit=units[0].unit,
        label_claim=float(label_claim),
        units=len(units),
        publications=n_pub,
        releasable=len(rel),
        out_of_model=sum(r.out_of_model for r in units),
        held=sum((not r.releasable) and not r.out_of_model for r in units),
        mean=mean,
        sd=sd,
        mean_pct=mean_pct,
        rsd_pct=100.0 * sd / mean if sd is not None and mean else None,
        min=float(values.min()) if values.size else None,
        max=float(values.max()) if values.size else None,
        outside_85_115=int(((pct < 85.0) | (pct > 115.0)).sum()),
        outside_75_125=int(((pct < 75.0) | (pct > 125.0)).sum()),
        reference_value_pct=m_ref,
        k=k,
        acceptance_value=av,
        models=dict(Counter(r.model for r in units)),
        model_versions=dict(Counter(r.model_version for r in units)),
        first_timestamp=min(stamps),
        last_timestamp=max(stamps),
    )


def format_summary(s: BatchSummary) -> str:
    """The summary as the lines a reviewer reads."""

    def f(x: float | None, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    share = 100.0 * s.releasable / s.units
    lines = [
        f"batch {s.batch or '(none)'} ({', '.join(p or '(none)' for p in s.products)}), "
        f"{s.target}, label claim {s.label_claim:g} {s.unit}",
        f"units: {s.units} spectra ({s.publications} publications, "
        f"{s.publications - s.units} redeliveries counted once)",
        f"releasable: {s.releasable} ({share:.1f} %); out of model {s.out_of_model}, "
        f"held otherwise (no value or outside the calibrated range) {s.held}",
        f"content of releasable units: mean {f(s.mean)} {s.unit} ({f(s.mean_pct)} % LC), "
        f"sd {f(s.sd)} {s.unit} (RSD {f(s.rsd_pct)} %), range {f(s.min)}-{f(s.max)} {s.unit}",
        f"units outside 85-115 % LC: {s.outside_85_115}; outside 75-125 % LC: {s.outside_75_125}",
    ]
    if s.acceptance_value is not None:
        lines.append(
            f"acceptance value AV = |M - mean| + k s = {s.acceptance_value:.2f} "
            f"(M {f(s.reference_value_pct)} % LC, k {s.k:g}; compare with L1 = 15.0 unless "
            "the monograph says otherwise)"
        )
    else:
        lines.append("acceptance value: pass --k (from the pharmacopoeial table for this n)")
    models = ", ".join(f"{m} {n}" for m, n in sorted(s.models.items()))
    versions = ", ".join(f"{v} ({n})" for v, n in sorted(s.model_versions.items()))
    lines.append(f"models: {models}; versions: {versions}")
    return "\n".join(lines)
