"""The promotion policy of a retrain: the out-of-model check, then RMSE against the champion."""

from __future__ import annotations

import math
from typing import Any

#: The 99 % limits are approximations (an F quantile for T², a moment-matched chi² for Q, both
#: from a few hundred calibration spectra): spectra of the calibrated process were flagged at
#: 1-5 % in the tests (a new-lot candidate on old-lot spectra 3.5 %, a mixed holdout 4.1 %;
#: Q alone 0.4-3.3 % on the shootout, docs/results/shootout.md), so up to this multiple of the
#: nominal rate still counts as "near" it.
TOLERANCE = 2.5


def out_of_model_bound(
    n: int, nominal: float = 0.02, alpha: float = 0.01, tolerance: float = TOLERANCE
) -> float:
    """The largest out-of-model share on ``n`` holdout spectra still near the nominal rate.

    A spectrum is out of model when its T² or its Q is above the 99 % limit: for spectra of
    the calibrated process that happens at a rate of at most ``1 - 0.99² ≈ 2 %`` (``nominal``),
    up to ``tolerance`` times that as the limits are approximations (:data:`TOLERANCE`). The
    count of such spectra among ``n`` is then at most binomial(n, tolerance x nominal), and the
    bound is ``k / n`` with ``k`` its ``1 - alpha`` quantile: a model that fits the process is
    refused with probability at most ``alpha``. With the defaults (5 %, 1 %): 2 of 6, 6 of 40,
    11 of 100, 30 of 394; a candidate that rejects every spectrum fails at any ``n``.
    """
    if n <= 0:
        return 0.0
    from scipy import stats  # a training dependency; imported here to keep the module light

    return float(stats.binom.ppf(1.0 - alpha, n, min(1.0, tolerance * nominal))) / n


def decide(
    policy: str,
    margin: float,
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    *,
    nominal_out_of_model: float = 0.02,
    alpha: float = 0.01,
    tolerance: float = TOLERANCE,
) -> tuple[bool, str]:
    """Whether to promote the candidate, and why (the report's words).

    Under ``auto`` the candidate must first pass the out-of-model check: its out-of-model share
    on the holdout (``candidate["out_of_model_share"]`` of ``candidate["n"]`` spectra) at most
    :func:`out_of_model_bound`; a candidate that rejects the process as it is now protects
    nothing, however small its RMSE. Then its RMSE must beat the champion's by ``margin``.
    """
    if policy != "auto":
        return False, "policy is approval: the candidate waits for `nirwatch models promote`"
    n = int(candidate.get("n", 0))
    share = candidate.get("out_of_model_share", float("nan"))
    bound = out_of_model_bound(n, nominal_out_of_model, alpha, tolerance)
    if not (n > 0 and math.isfinite(share) and share <= bound):
        return False, (
            f"policy auto: out-of-model share {share:.3g} of {n} holdout spectra is above "
            f"{bound:.3g}, the binomial {1 - alpha:g} bound at {tolerance:g} x the nominal "
            f"{nominal_out_of_model:g}; kept as candidate"
        )
    if champion is None:
        return True, "policy auto and no champion could be scored: the candidate is the first"
    bar = (1.0 - margin) * champion["rmse"]
    c = candidate["rmse"]
    ok = f"out-of-model share {share:.3g} <= {bound:.3g}"
    if math.isfinite(c) and c <= bar:
        return True, (
            f"policy auto: {ok}, holdout RMSE {c:.4g} <= (1 - {margin}) x champion's "
            f"{champion['rmse']:.4g} = {bar:.4g}"
        )
    return False, (
        f"policy auto: {ok}, but holdout RMSE {c:.4g} does not beat (1 - {margin}) x "
        f"champion's {champion['rmse']:.4g} = {bar:.4g}; kept as candidate"
    )


def out_of_model_check(
    cand: dict[str, float],
    nominal: float = 0.02,
    alpha: float = 0.01,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """The report's account of the out-of-model check (shown under every policy)."""
    n = int(cand["n"])
    bound = out_of_model_bound(n, nominal, alpha, tolerance)
    share = cand["out_of_model_share"]
    return {
        "rule": (
            "candidate's out-of-model share on the holdout <= k/n, k the binomial "
            f"{1 - alpha:g} quantile of n draws at {tolerance:g} x the nominal rate {nominal:g} "
            "(T² or Q above its 99 % limit; the limits are approximations)"
        ),
        "n": n,
        "nominal": nominal,
        "tolerance": tolerance,
        "alpha": alpha,
        "max_share": bound,
        "candidate_share": share,
        "passed": bool(math.isfinite(share) and share <= bound),
    }
