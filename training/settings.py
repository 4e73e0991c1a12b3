"""Settings of the training job (``NIRWATCH_TRAIN_*``), read once in ``main()``.

The registry location and the bundle signing key come from ``NIRWATCH_REGISTRY_*``
(:class:`nirwatch.registry.RegistrySettings`), shared with ``nirwatch models``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nirwatch.registry import RegistrySettings
from nirwatch.settings import NirwatchSettings


class TrainingSettings(NirwatchSettings):
    """How ``nirwatch train`` (and the retraining service) fit a bundle."""

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_TRAIN_", frozen=True, extra="ignore")

    registry: RegistrySettings = Field(default_factory=RegistrySettings)

    seed: int = Field(default=0, ge=0, description="seeds CV folds, augmentation and the CNN")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = Field(default=False, description="deterministic torch kernels")

    # CNN (Bjerrum, Glahder & Skov 2017: augment, then EMSC, then the network). Unset
    # hyper-parameters keep training.cnn.TrainConfig's defaults.
    epochs: int | None = Field(default=None, ge=1, le=100_000)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, ge=1, description="early stopping, in epochs")
    cnn_members: int = Field(
        default=5,
        ge=1,
        le=20,
        description="ensemble of networks, one per stratified fold (each early-stopped on its "
        "held-out fold, which also gives the CNN's RMSECV); 1 = one network",
    )
    validation_fraction: float = Field(
        default=0.15,
        gt=0,
        lt=0.5,
        description="with cnn_members=1: validation share carved from the calibration data",
    )
    cnn_start_nm: float | None = Field(
        default=None, description="CNN input starts here (nm); e.g. 1100 on the shootout"
    )
    cnn_stop_nm: float | None = Field(default=None, description="CNN input ends here (nm)")
    augment_copies: int = Field(default=10, ge=0, description="0 turns augmentation off")
    emsc_order: int = Field(default=2, ge=0, le=6)

    # PLS (MSC + Savitzky-Golay 1st derivative, latent variables by K-fold CV)
    pls_max_components: int = Field(default=20, ge=1, le=100)
    cv_folds: int = Field(default=10, ge=2, le=100)
    sg_window: int = Field(default=11, ge=3)
    sg_polyorder: int = Field(default=2, ge=1)

    # Serving
    fallback_k: float = Field(
        default=3.0, gt=0, description="CNN falls back to PLS when |cnn - pls| > k * RMSECV"
    )
