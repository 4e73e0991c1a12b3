"""An equal-weight average of PLS calibrations that cross-validation cannot tell apart.

When many preprocessing recipes score within one standard error of the best, which of them
wins is partly the luck of the folds; serving their average instead keeps what they share and
averages out what each learned from noise. This is model averaging over the models the data
support about equally well (Madigan & Raftery 1994, JASA 89, 1535-1546, "Occam's window"),
here with the one-standard-error band (Hastie, Tibshirani & Friedman, ESL 2nd ed., sec. 7.10)
as the window; averaging over preprocessing is the idea of ensemble preprocessing in
chemometrics (e.g. Mishra et al. 2020, Anal. Chim. Acta 1108, 48-55: "SPORT").

The first member (the *lead*: the search's own winner) also carries the diagnostics: T²/Q
statistics are fitted on its preprocessed spectra (:meth:`preprocess`).

Serving cost: every step after a member's last scatter correction (Savitzky-Golay, autoscaling,
a wavelength range) is linear, so it folds into that member's coefficients; members whose
nonlinear steps are the same fitted transforms (same range and scatter correction, fitted on the
same spectra) then share one preprocessing pass and one summed coefficient vector. Ten members
typically cost two or three passes instead of ten.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted

from nirwatch.chemometrics._base import StateArrays, StateMeta, check_spectra, check_state
from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.pls import PLSCalibration, check_calibration_xy
from nirwatch.chemometrics.scaling import UnitVarianceScaling
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.chemometrics.state import apply_steps, register_stateful
from nirwatch.errors import DataError

__all__ = ["AveragedPLSCalibration", "one_se_tied"]


@register_stateful
class AveragedPLSCalibration(RegressorMixin, BaseEstimator):
    """The mean prediction of several :class:`PLSCalibration` (each with its own preprocessing).

    Parameters
    ----------
    calibrations : sequence of PLSCalibration
        Unfitted or fitted; :meth:`fit` refits clones of them. The first is the lead.

    Attributes
    ----------
    calibrations_ : list of PLSCalibration, fitted
    n_components_ : int
        The lead's latent variables (the diagnostics' model).
    """

    def __init__(self, calibrations: Sequence[PLSCalibration] = ()) -> None:
        self.calibrations = calibrations

    def fit(self, X: Any, y: Any) -> Self:
        """Fit every member on X (n, p), y (n,)."""
        X, y = check_calibration_xy(X, y)
        if not self.calibrations:
            raise DataError("AveragedPLSCalibration: expected at least one calibration, got none")
        self.calibrations_ = [clone(c).fit(X, y) for c in self.calibrations]
        self._fitted()
        return self

    def _fitted(self) -> None:
        lead = self.calibrations_[0]
        self.n_components_ = int(lead.n_components_)
        self.n_features_in_ = int(lead.n_features_in_)
        self._groups = _shared_prefixes(self.calibrations_)
        self._intercept = float(sum(m.intercept_ for m in self.calibrations_))

    @property
    def lead_(self) -> PLSCalibration:
        check_is_fitted(self, "calibrations_")
        return self.calibrations_[0]

    def preprocess(self, X: Any) -> np.ndarray:
        """The lead member's preprocessed spectra (the diagnostics' input)."""
        return self.lead_.preprocess(X)

    def predict(self, X: Any) -> np.ndarray:
        """Mean of the members' predictions, shape (n,), float64."""
        return self.predict_and_preprocess(X)[0]

    def predict_and_preprocess(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean prediction, the lead's preprocessed spectra): each shared nonlinear prefix is
        computed once, the lead's linear tail on top of its group's."""
        lead = self.lead_
        X = check_spectra(X, self.n_features_in_, who="AveragedPLSCalibration")
        total = np.zeros(X.shape[0], dtype=np.float64)
        Z = None
        for g in self._groups:
            U = apply_steps(g.prefix, X)
            total += U.astype(np.float64, copy=False) @ g.coef
            if g.has_lead:
                Z = apply_steps(lead.steps_[len(g.prefix) :], U)
        assert Z is not None  # the lead is in exactly one group
        return (total + self._intercept) / len(self.calibrations_), Z

    def to_state(self) -> tuple[StateArrays, StateMeta]:
        """Every member's state, its arrays under ``members.<i>.``."""
        check_is_fitted(self, "calibrations_")
        arrays: StateArrays = {}
        members: list[StateMeta] = []
        for i, member in enumerate(self.calibrations_):
            a, m = member.to_state()
            arrays.update({f"members.{i}.{k}": v for k, v in a.items()})
            members.append(m)
        return arrays, {"class": type(self).__name__, "members": members}

    @classmethod
    def from_state(cls, arrays: StateArrays, meta: StateMeta) -> Self:
        """Rebuild from :meth:`to_state` output."""
        check_state(arrays, meta, cls, [])
        members = meta.get("members")
        if not isinstance(members, list) or not members:
            raise DataError(
                f"AveragedPLSCalibration state: expected a non-empty list of members, "
                f"got {type(members).__name__}"
            )
        fitted = []
        for i, m in enumerate(members):
            prefix = f"members.{i}."
            own = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            fitted.append(PLSCalibration.from_state(own, m))
        obj = cls(calibrations=fitted)
        obj.calibrations_ = fitted
        obj._fitted()
        return obj


@dataclass(frozen=True)
class _Group:
    """Members sharing their nonlinear preprocessing: its fitted steps, their coefficients
    on its output (linear tails folded in) summed, whether the lead is among them."""

    prefix: list[Any]
    coef: np.ndarray
    has_lead: bool


#: Steps that are linear maps of the spectrum (fold into a member's coefficients).
_LINEAR = (SavitzkyGolay, UnitVarianceScaling, WavelengthRange)


def _signature(steps: Sequence[Any]) -> tuple[Any, ...]:
    """Equal for fitted steps that transform every spectrum identically."""
    out: list[Any] = []
    for step in steps:
        arrays, meta = step.to_state()
        out.append(json.dumps(meta, sort_keys=True, default=str))
        out.extend((k, v.dtype.str, v.shape, v.tobytes()) for k, v in sorted(arrays.items()))
    return tuple(out)


def _shared_prefixes(members: Sequence[PLSCalibration]) -> list[_Group]:
    """Group the members by their nonlinear prefix; fold each linear tail into its coefficients
    (the tail applied to the identity is its matrix: tail(U) = U @ tail(I))."""
    groups: dict[tuple[Any, ...], tuple[list[Any], np.ndarray, bool]] = {}
    for i, m in enumerate(members):
        k = len(m.steps_)
        while k > 0 and isinstance(m.steps_[k - 1], _LINEAR):
            k -= 1
        prefix, tail = list(m.steps_[:k]), m.steps_[k:]
        # The tail's first step was fitted on the prefix's output: its width is the tail's input.
        matrix = apply_steps(tail, np.eye(tail[0].n_features_in_)) if tail else None
        coef = m.coef_ if matrix is None else matrix @ m.coef_
        key = _signature(prefix)
        if key in groups:
            p, c, lead = groups[key]
            groups[key] = (p, c + coef, lead)
        else:
            groups[key] = (prefix, coef.astype(np.float64, copy=True), i == 0)
    return [_Group(p, c, lead) for p, c, lead in groups.values()]


def one_se_tied(scores: np.ndarray, se: np.ndarray, best: int, max_members: int) -> list[int]:
    """Indices of the candidates within one standard error of the best, best first.

    Parameters
    ----------
    scores : ndarray (C,)
        Each candidate's RMSECV (inf where it could not be scored).
    se : ndarray (C,)
        Each candidate's standard error of that RMSECV.
    best : int
        The chosen candidate (always first, whatever the ties among scores).
    max_members : int
        At most this many, lowest RMSECV first (1: the best alone).
    """
    if max_members < 1:
        raise DataError(f"max_members must be >= 1, got {max_members}")
    limit = scores[best] + se[best]
    order = [int(i) for i in np.argsort(scores, kind="stable") if scores[i] <= limit]
    return [best] + [i for i in order if i != best][: max_members - 1]
