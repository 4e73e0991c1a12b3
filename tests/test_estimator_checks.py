"""scikit-learn's own estimator checks on every chemometrics estimator.

Each check that cannot apply is listed by name with the domain reason; nothing is skipped
wholesale. The numbers (against chemotools and scikit-learn's PLS) are tested in the
test_chemometrics_*.py files; these checks pin the API: parameters untouched by ``fit``,
``n_features_in_`` checked at transform/predict time, ValueError (``DataError``) on bad input,
clone / get_params / set_params round trips, pickling, dtype handling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.diagnostics import CalibrationStatistics
from nirwatch.chemometrics.pls import PLSCalibration, PLSComponentsCV
from nirwatch.chemometrics.pls_average import AveragedPLSCalibration
from nirwatch.chemometrics.pls_search import PLSCalibrationCV
from nirwatch.chemometrics.recipes import Recipe
from nirwatch.chemometrics.scaling import UnitVarianceScaling
from nirwatch.chemometrics.scatter import (
    ExtendedMultiplicativeScatterCorrection,
    MultiplicativeScatterCorrection,
    StandardNormalVariate,
)
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.errors import DataError

#: scikit-learn's checks that fit spectra of 2 points.
TWO_POINTS = (
    "check_estimators_overwrite_params",
    "check_estimators_fit_returns_self",
    "check_readonly_memmap_input",
    "check_fit_idempotent",
    "check_fit_check_is_fitted",
    "check_n_features_in",
)
#: scikit-learn's transformer checks that standardise every column first (StandardScaler).
STANDARDISED = (
    "check_transformer_data_not_an_array",
    "check_transformer_general",
    "check_transformer_general(readonly_memmap=True)",
    "check_transformer_preserve_dtypes",
)
ZERO_REFERENCE = (
    "the check standardises every column, so the mean spectrum (the default reference) is "
    "all zeros: no spectrum can be scaled to it and the scatter correction refuses it"
)


def expected_failures(estimator: Any) -> dict[str, str]:
    """Checks that cannot apply, by name, with the domain reason."""
    out: dict[str, str] = {}
    if isinstance(
        estimator, MultiplicativeScatterCorrection | ExtendedMultiplicativeScatterCorrection
    ):
        out.update(dict.fromkeys(STANDARDISED, ZERO_REFERENCE))
    if isinstance(estimator, ExtendedMultiplicativeScatterCorrection):
        short = "EMSC(order=1) fits offset, slope and reference: it needs >= 3 points per spectrum"
        out.update(dict.fromkeys(TWO_POINTS, short))
    if isinstance(estimator, SavitzkyGolay):
        short = "a Savitzky-Golay window of 3 points needs spectra of >= 3 points"
        out.update(dict.fromkeys(TWO_POINTS, short))
    return out


RECIPES = [
    Recipe(None, None, "none"),
    Recipe(None, None, "snv"),
    Recipe(None, None, "msc"),
    Recipe(None, None, "none", scaling="autoscale"),
]

ESTIMATORS = [
    MultiplicativeScatterCorrection(),
    ExtendedMultiplicativeScatterCorrection(order=1),
    StandardNormalVariate(),
    UnitVarianceScaling(),
    SavitzkyGolay(window_length=3, polyorder=1, deriv=1),
    WavelengthRange(stop=1.0),
    SpectralAugmenter(n_copies=2, random_state=0),
    PLSCalibration(n_components=1),
    PLSCalibration(steps=[WavelengthRange(start=0.0)], n_components=1),
    PLSComponentsCV(steps=[WavelengthRange(start=0.0)], max_components=2, cv=3),
    PLSCalibrationCV(recipes=RECIPES, max_components=2, cv=3, repeats=1),
    PLSCalibrationCV(recipes=RECIPES, max_components=2, cv=3, repeats=1, max_average=2),
    AveragedPLSCalibration(
        [
            PLSCalibration(n_components=1),
            PLSCalibration(steps=[WavelengthRange(start=0.0)], n_components=1),
        ]
    ),
    CalibrationStatistics(),
]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failures, xfail_strict=True)
def test_sklearn_compatible(estimator: Any, check: Any) -> None:
    check(estimator)


def test_data_error_is_a_value_error() -> None:
    """scikit-learn (and its checks) catch ValueError for bad input; so does DataError."""
    assert issubclass(DataError, ValueError)
    with pytest.raises(ValueError, match="non-finite"):
        StandardNormalVariate().fit(np.array([[1.0, np.nan, 2.0]]))


def test_expected_failures_really_fail() -> None:
    """The listed exceptions are real: these estimators refuse 2-point spectra by name."""
    X = np.random.default_rng(0).uniform(size=(10, 2))
    with pytest.raises(DataError, match="n_features=2"):
        ExtendedMultiplicativeScatterCorrection(order=1).fit(X)
    with pytest.raises(DataError, match="window_length 3 exceeds the 2 points"):
        SavitzkyGolay(window_length=3, polyorder=1).fit(X)
    standardised = (X - X.mean(axis=0)) / X.std(axis=0)
    with pytest.raises(DataError, match="rank deficient"):
        MultiplicativeScatterCorrection().fit(standardised)
