"""The promotion policy of a retrain: the out-of-model check, then RMSE against the champion."""

from __future__ import annotations

import math
from typing import Any


def out_of_model_bound(n: int, nominal: float = 0.02, alpha: float = 0.01) -> float:
    """The largest out-of-model share on ``n`` holdout spectra still near the nominal rate.

    A spectrum is out of model when its T² or its Q is above the 99 % limit: for spectra of
    the calibrated process that happens at a rate of at most ``1 - 0.99² ≈ 2 %`` (``nominal``).
    The count of such spectra among ``n`` is then binomial, and the bound is ``k / n`` with
    ``k`` the binomial ``1 - alpha`` quantile: a model that fits the process is refused with
    probability at most ``alpha`` (for ``n = 6``: k = 1; ``n = 40``: k = 3; ``n = 100``: k = 6).
    """
    if n <= 0:
        return 0.0
    from scipy import stats  # a training dependency; imported here to keep the module light

    return float(stats.binom.ppf(1.0 - alpha, n, nominal)) / n


def decide(
    policy: str,
    margin: float,
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    *,
    nominal_out_of_model: float = 0.02,
    alpha: float = 0.01,
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
    bound = out_of_model_bound(n, nominal_out_of_model, alpha)
    if not (n > 0 and math.isfinite(share) and share <= bound):
        return False, (
            f"policy auto: out-of-model share {share:.3g} of {n} holdout spectra is above "
            f"{bound:.3g}, the binomial {1 - alpha:g} bound at the nominal "
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
    cand: dict[str, float], nominal: float = 0.02, alpha: float = 0.01
) -> dict[str, Any]:
    """The report's account of the out-of-model check (shown under every policy)."""
    n = int(cand["n"])
    bound = out_of_model_bound(n, nominal, alpha)
    return {
        "rule": (
            "candidate's out-of-model share on the holdout <= k/n, k the binomial "
            f"{1 - alpha:g} quantile of n draws at the nominal rate "
            f"{nominal:g} (T² or Q above its 99 % limit)"
        ),
        "n": n,
        "nominal": nominal,
        "alpha": alpha,
        "max_share": bound,
        "candidate_share": cand["out_of_model_share"],
        "passed": bool(math.isfinite(cand["out_of_model_share"]))
        and cand["out_of_model_share"] <= bound,
    }
