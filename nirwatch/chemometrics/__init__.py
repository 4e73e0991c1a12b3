"""Chemometrics core: scatter correction, derivatives, augmentation, PLS, diagnostics.

All transformers follow scikit-learn's fit/transform API and store their fitted state as plain
arrays plus JSON metadata (``to_state`` / ``from_state``), never pickle.
"""

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.diagnostics import CalibrationStatistics
from nirwatch.chemometrics.pls import PLSCalibration, PLSComponentsCV, select_preprocessing_cv
from nirwatch.chemometrics.scatter import (
    ExtendedMultiplicativeScatterCorrection,
    MultiplicativeScatterCorrection,
    StandardNormalVariate,
)
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.chemometrics.state import (
    STEP_CLASSES,
    apply_steps,
    dump_steps,
    load_steps,
    register_step,
)

__all__ = [
    "STEP_CLASSES",
    "CalibrationStatistics",
    "ExtendedMultiplicativeScatterCorrection",
    "MultiplicativeScatterCorrection",
    "PLSCalibration",
    "PLSComponentsCV",
    "SavitzkyGolay",
    "SpectralAugmenter",
    "StandardNormalVariate",
    "WavelengthRange",
    "apply_steps",
    "dump_steps",
    "load_steps",
    "register_step",
    "select_preprocessing_cv",
]
