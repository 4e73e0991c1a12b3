"""Chemometrics core: scatter correction, derivatives, augmentation, PLS, diagnostics.

All transformers follow scikit-learn's fit/transform API and store their fitted state as plain
arrays plus JSON metadata (``to_state`` / ``from_state``), never pickle.
"""

from nirwatch.chemometrics.augmentation import SpectralAugmenter
from nirwatch.chemometrics.derivative import SavitzkyGolay
from nirwatch.chemometrics.scatter import (
    ExtendedMultiplicativeScatterCorrection,
    MultiplicativeScatterCorrection,
    StandardNormalVariate,
)
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.chemometrics.state import STEP_CLASSES, dump_steps, load_steps, register_step

__all__ = [
    "STEP_CLASSES",
    "ExtendedMultiplicativeScatterCorrection",
    "MultiplicativeScatterCorrection",
    "SavitzkyGolay",
    "SpectralAugmenter",
    "StandardNormalVariate",
    "WavelengthRange",
    "dump_steps",
    "load_steps",
    "register_step",
]
