"""Chemometrics core: scatter correction, derivatives, augmentation, PLS, diagnostics.

All transformers follow scikit-learn's fit/transform API and store their fitted state as plain
arrays plus JSON metadata (``to_state`` / ``from_state``), never pickle; every storable class is
registered in :mod:`nirwatch.chemometrics.state`.
"""

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.diagnostics import CalibrationStatistics
from nirwatch.chemometrics.pls import PLSCalibration, PLSComponentsCV, select_preprocessing_cv
from nirwatch.chemometrics.scaling import UnitVarianceScaling
from nirwatch.chemometrics.scatter import (
    ExtendedMultiplicativeScatterCorrection,
    MultiplicativeScatterCorrection,
    StandardNormalVariate,
)
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.chemometrics.state import (
    Stateful,
    apply_steps,
    dump_steps,
    load_steps,
    register_stateful,
    stateful_class,
)

__all__ = [
    "CalibrationStatistics",
    "ExtendedMultiplicativeScatterCorrection",
    "MultiplicativeScatterCorrection",
    "PLSCalibration",
    "PLSComponentsCV",
    "SavitzkyGolay",
    "SpectralAugmenter",
    "StandardNormalVariate",
    "Stateful",
    "UnitVarianceScaling",
    "WavelengthRange",
    "apply_steps",
    "dump_steps",
    "load_steps",
    "register_stateful",
    "select_preprocessing_cv",
    "stateful_class",
]
