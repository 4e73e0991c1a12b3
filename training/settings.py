"""Settings of the training job (``NIRWATCH_TRAIN_*``), read once in ``main()``.

The registry location and the bundle signing key come from ``NIRWATCH_REGISTRY_*``
(:class:`nirwatch.models.registry.RegistrySettings`), shared with ``nirwatch models``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nirwatch.models.registry import RegistrySettings
from nirwatch.settings import NirwatchSettings


class TrainingSettings(NirwatchSettings):
    """How ``nirwatch train`` (and the retraining service) fit a bundle."""

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_TRAIN_", frozen=True, extra="ignore")
    #: "batch" alone is a production batch (README, Vocabulary)
    renamed_env: ClassVar[dict[str, str]] = {"NIRWATCH_TRAIN_BATCH_SIZE": "mini_batch_size"}

    registry: RegistrySettings = Field(default_factory=RegistrySettings)

    seed: int = Field(default=0, ge=0, description="seeds CV folds, augmentation and the CNN")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = Field(default=False, description="deterministic torch kernels")

    # CNN (Bjerrum, Glahder & Skov 2017: augment, then EMSC, then the network). Unset
    # hyper-parameters keep training.cnn.TrainConfig's defaults.
    epochs: int | None = Field(default=None, ge=1, le=100_000)
    mini_batch_size: int | None = Field(default=None, ge=1, description="spectra per CNN step")
    learning_rate: float | None = Field(default=None, gt=0)
    patience: int | None = Field(default=None, ge=1, description="early stopping, in epochs")
    cnn_members: int = Field(
        default=5,
        ge=1,
        le=20,
        description="ensemble of networks, one per outer fold of the model comparison (each "
        "holds its fold out, which gives the CNN's out-of-fold predictions); 1 = one network "
        "on a validation split, served without comparison",
    )
    validation_fraction: float = Field(
        default=0.15,
        gt=0,
        lt=0.5,
        description="with cnn_members=1: validation share carved from the calibration data",
    )
    cnn_start_nm: float | None = Field(
        default=None, description="CNN input starts here (nm); unset: the PLS search's range"
    )
    cnn_stop_nm: float | None = Field(default=None, description="CNN input ends here (nm)")
    augment_copies: int = Field(default=10, ge=0, description="0 turns augmentation off")
    emsc_order: int = Field(default=2, ge=0, le=6)

    cnn_min_samples: int = Field(
        default=100,
        ge=2,
        description="with --model both, fewer calibration spectra than this train no CNN (a "
        "stated rule, not a measurement: a 13k-weight network trained on 4/5 of under 100 "
        "spectra is unlikely to beat a chosen PLS; Bjerrum et al. 2017 had 195); --model cnn "
        "trains one regardless",
    )

    # PLS: recipe (range, scatter correction, derivative) and latent variables by repeated
    # K-fold CV (nirwatch.chemometrics.pls_search.PLSCalibrationCV)
    pls_max_components: int = Field(
        default=40, ge=1, le=200, description="upper bound; the data lower it (n - 2, points)"
    )
    cv_folds: int = Field(default=10, ge=2, le=100)
    cv_repeats: int | None = Field(
        default=None, ge=1, le=20, description="unset: 400 / n, within 1..5"
    )
    nested_cv: bool = Field(
        default=True,
        description="rerun the whole PLS search inside the outer folds for an honest RMSECV "
        "(selection included); False reports the search's own, optimistic, out-of-fold "
        "predictions: quicker, for demos and tests",
    )
    search_max_samples: int = Field(
        default=500,
        ge=20,
        description="the PLS search runs on at most this many spectra, spread over the "
        "reference values (its cost grows with n^2); the winner is refitted on all",
    )
    pls_candidates: Literal["auto", "compact", "full"] = Field(
        default="auto",
        description="recipes the PLS search compares: 'compact' the 16 common ones (full "
        "range), 'full' also wavelength windows and more derivative widths (181); 'auto' runs "
        "both and serves the full search only when its nested RMSECV beats the compact one's "
        "by more than one standard error",
    )
    pls_average: int = Field(
        default=10,
        ge=1,
        le=50,
        description="serve the equal-weight average of up to this many PLS recipes whose "
        "RMSECV lies within one standard error of the best (model averaging over the recipes "
        "CV cannot tell apart); 1 serves the best recipe alone",
    )
    pls_rule: Literal["1se", "min"] = Field(
        default="1se", description="latent variables: one-standard-error rule or minimum"
    )

    # Serving: intervals, extrapolation, fallback
    interval_level: float = Field(
        default=0.95, gt=0.5, lt=1, description="conformal prediction interval coverage"
    )
    max_interval_width: float | None = Field(
        default=None, gt=0, description="wider intervals are not releasable (target units)"
    )
    extrapolation_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="share of each range end held out to choose the model that serves at the ends",
    )
    extrapolation_margin: float = Field(
        default=1.0,
        ge=0,
        description="the range-end model serves within this many RMSECV "
        "of a calibrated range end, and beyond it",
    )
    fallback_k: float = Field(
        default=3.0, gt=0, description="CNN falls back to PLS when |cnn - pls| > k * RMSECV"
    )
