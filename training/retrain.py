"""One retrain: recent labelled spectra plus the calibration set → a candidate → a decision.

Steps of :func:`retrain`:

1. Hold out a seeded random share of the *recent* labelled spectra (they represent the process
   as it is now; the calibration set is used when too few recent ones exist).
2. Fit a bundle on the calibration set plus the rest of the recent spectra, through a
   ``Fitter`` (by default :func:`training.fit.fit_bundle`, which augments and applies EMSC as
   in Bjerrum, Glahder & Skov 2017) and register it as a **candidate**. When the recent
   spectra would be less than ``recent_min_share`` of the training set, a content-stratified
   subset of the calibration set is used (see :func:`holdout_split`): a few new-lot spectra
   among hundreds of calibration spectra are an outlying cluster of the candidate's own PCA,
   so their Hotelling T² stays above its 99 % limit and the candidate flags every spectrum
   of the process as it now is out of model.
3. Score candidate and champion on the holdout (RMSE, bias, out-of-model share).
4. Policy ``auto``: promote only when the candidate's out-of-model share on the holdout is
   near its nominal rate (:func:`out_of_model_bound`) and its RMSE is at least ``margin``
   (relative) below the champion's; ``approval``: leave it for ``nirwatch models promote``
   (GMP: retraining is automatic, deployment is a decision).
5. Write a JSON report: trigger, data used, metrics, the out-of-model check, decision and why.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from nirwatch.chemometrics.pls_search import spread_subset
from nirwatch.errors import ConfigError, DataError, NirwatchError
from nirwatch.models.bundle import data_hash, json_ready, load_bundle
from nirwatch.models.registry import ModelRegistry
from nirwatch.settings import NirwatchSettings, state_dir_field, under_state_dir
from training.labelled import Dataset
from training.promotion import decide, out_of_model_check
from training.settings import TrainingSettings

log = logging.getLogger(__name__)


class RetrainSettings(NirwatchSettings):
    """Retraining service settings (``NIRWATCH_RETRAIN_*``)."""

    model_config = SettingsConfigDict(env_prefix="NIRWATCH_RETRAIN_", frozen=True, extra="ignore")

    policy: Literal["auto", "approval"] = "approval"
    margin: float = Field(default=0.05, ge=0, lt=1, description="relative RMSE improvement")
    holdout_fraction: float = Field(default=0.25, gt=0, lt=0.9)
    min_recent_holdout: int = Field(default=10, ge=2, description="else hold out calibration")
    seed: int = Field(default=0, ge=0)
    recent_min_share: float = Field(
        default=0.25, ge=0, lt=1, description="else a stratified subset of the calibration"
    )
    nominal_out_of_model: float = Field(
        default=0.02, gt=0, lt=1, description="T² or Q above its 99 % limit: at most ~2 %"
    )
    out_of_model_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="false-rejection risk of the out-of-model check"
    )
    out_of_model_tolerance: float = Field(
        default=2.5, ge=1, description="x nominal still near it: the limits are approximate"
    )
    calibration_data: Path | None = Field(
        default=None, description="CSV or npz, read by nirwatch.io.datasets.load_spectra"
    )
    target: str = Field(default="y", description="target column (CSV) or array (npz)")
    unit: str = ""
    model: Literal["cnn", "pls", "both"] = "both"
    #: ``NIRWATCH_STATE_DIR`` (default ``var``); reports default to ``<state_dir>/retrain``.
    state_dir: Path = state_dir_field()
    reports_dir: Path = Path("var/retrain")
    schedule_seconds: float = Field(default=0.0, ge=0, description="0: no periodic retrain")
    cooldown_seconds: float = Field(default=600.0, ge=0, description="between alert retrains")
    recent_max: int = Field(default=5000, ge=1, description="labelled spectra kept")
    webhook_host: str = "127.0.0.1"
    webhook_port: int = Field(default=8095, ge=0, le=65535)
    webhook_token: SecretStr | None = None
    webhook_token_file: Path | None = None
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # The webhook server's limits (training/webhook.py): a request's headers must arrive within
    # header_timeout_s, its body within body_timeout_s; more connections are answered 503.
    webhook_header_timeout_s: float = Field(default=10.0, gt=0)
    webhook_body_timeout_s: float = Field(default=30.0, gt=0)
    webhook_max_connections: int = Field(default=64, ge=1)
    webhook_tls_cert: Path | None = Field(default=None, description="PEM; TLS with the key")
    webhook_tls_key: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_reports_dir(cls, data: Any) -> Any:
        return under_state_dir(data, "reports_dir", "retrain")

    def token(self) -> str:
        """The webhook's bearer token (from ``webhook_token`` or ``webhook_token_file``)."""
        if self.webhook_token is not None:
            token = self.webhook_token.get_secret_value().strip()
        elif self.webhook_token_file is not None:
            try:
                token = self.webhook_token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"NIRWATCH_RETRAIN_WEBHOOK_TOKEN_FILE: {exc}") from exc
        else:
            token = ""
        if len(token) < 16:
            raise ConfigError(
                "NIRWATCH_RETRAIN_WEBHOOK_TOKEN (or _TOKEN_FILE) must hold a token of at "
                f"least 16 characters, got {len(token)}"
            )
        return token


#: Writes a bundle fitted on the dataset into the given (new) directory and returns its path.
Fitter = Callable[[Dataset, Path], Path]


def fit_bundle_fitter(
    *,
    target: str,
    unit: str,
    model: Literal["cnn", "pls", "both"],
    settings: TrainingSettings | None = None,
    hmac_key: str | None = None,
    **overrides: Any,
) -> Fitter:
    """A Fitter over :func:`training.fit.fit_bundle` (augmentation + EMSC, CNN and/or PLS)."""

    def fit(data: Dataset, out_dir: Path) -> Path:
        from training.fit import fit_bundle  # the training job's entry point (CONTRACTS.md)

        return fit_bundle(
            data.X, data.y, data.wavelengths, target=target, unit=unit, model=model,
            out_dir=out_dir, settings=settings, hmac_key=hmac_key, **overrides,
        )  # fmt: skip

    return fit


@dataclass
class RetrainRequest:
    """Why a retrain runs: ``trigger`` is ``schedule``, ``webhook``, ``manual`` or
    ``initial_model`` (``retrain-service --initial-model``)."""

    trigger: str
    reason: str
    alerts: list[dict[str, Any]] = field(default_factory=list)


#: Fewest calibration spectra kept when the calibration set is subset for ``recent_min_share``.
MIN_CALIBRATION_ROWS = 20


def holdout_split(
    calibration: Dataset, recent: Dataset, settings: RetrainSettings
) -> tuple[Dataset, Dataset, str]:
    """(train, holdout, source): holdout from recent spectra when there are enough.

    When the recent training spectra would be fewer than ``settings.recent_min_share`` of the
    training set, only a subset of the calibration set is used, evenly spaced in the order of
    its reference values (so the calibrated range stays covered), of at least
    ``MIN_CALIBRATION_ROWS`` rows. A small minority cluster (the process after a step change)
    sits far out on the PCA component it makes itself: at share ``s`` its T² on that component
    alone is about ``(1 - s) / s`` (16 at 6 %), above the 99 % limit of a few-component model.
    """
    rng = np.random.default_rng(settings.seed)
    source = "recent" if len(recent) >= settings.min_recent_holdout else "calibration"
    pool = recent if source == "recent" else calibration
    order = rng.permutation(len(pool))
    n_hold = max(2, int(round(settings.holdout_fraction * len(pool))))
    hold, rest = pool.subset(order[:n_hold]), pool.subset(np.sort(order[n_hold:]))
    if source == "recent":
        calibration = _calibration_share(calibration, len(rest), settings.recent_min_share)
    other = calibration if source == "recent" else recent
    train = Dataset(
        np.vstack([other.X, rest.X]),
        np.concatenate([other.y, rest.y]),
        calibration.wavelengths,
        [*other.sample_ids, *rest.sample_ids],
    )
    return train, hold, source


def _calibration_share(calibration: Dataset, n_recent: int, share: float) -> Dataset:
    """The calibration rows to train with so that ``n_recent`` make up ``share`` of the set."""
    if share <= 0 or n_recent == 0:
        return calibration
    n_keep = max(MIN_CALIBRATION_ROWS, int(math.ceil(n_recent * (1.0 - share) / share)))
    if n_keep >= len(calibration):
        return calibration
    return calibration.subset(spread_subset(calibration.y, n_keep))


def evaluate(
    bundle: Path, holdout: Dataset, hmac_key: str | bytes | None = None
) -> dict[str, float]:
    """RMSE, bias, CNN share and out-of-model share of a bundle's predictions on the holdout."""
    pred = load_bundle(bundle, hmac_key, device="cpu").predict(holdout.X.astype(np.float32))
    residual = np.asarray(pred.value, dtype=float) - holdout.y
    return {
        "n": float(holdout.y.size),
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "bias": float(np.mean(residual)),
        "cnn_share": float(np.mean(np.asarray(pred.model) == "cnn")),
        "out_of_model_share": float(np.mean(pred.out_of_model)),
    }


def retrain(
    request: RetrainRequest,
    calibration: Dataset,
    recent: Dataset,
    registry: ModelRegistry,
    fitter: Fitter,
    settings: RetrainSettings,
    workdir: Path,
) -> dict[str, Any]:
    """Run one retrain (see the module docstring); returns the report, also written to disk."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "schema": "nirwatch.retrain-report/1",
        "started_at": started.isoformat(),
        "trigger": request.trigger,
        "reason": request.reason,
        "alerts": request.alerts[:50],
        "policy": settings.policy,
        "margin": settings.margin,
        "champion_before": registry.champion_version(),
    }
    try:
        train, holdout = _split(calibration, recent, settings, report)
        out = workdir / f"candidate-{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        bundle = fitter(train, out)
        report["fit_seconds"] = round(time.perf_counter() - t0, 3)
        version = registry.register(bundle)
        shutil.rmtree(bundle, ignore_errors=True)  # the registry holds its own verified copy
        report["candidate"] = version
        _judge(version, holdout, registry, settings, report)
    except NirwatchError as exc:
        log.exception("retrain failed")
        report["decision"] = "failed"
        report["why"] = f"{type(exc).__name__}: {exc}"
    report["champion_after"] = registry.champion_version()
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["path"] = str(write_report(report, settings.reports_dir, started))
    log.info("retrain %s: %s (%s)", report.get("candidate"), report["decision"], report["why"])
    return report


def _split(
    calibration: Dataset, recent: Dataset, settings: RetrainSettings, report: dict[str, Any]
) -> tuple[Dataset, Dataset]:
    """Training set and holdout (:func:`holdout_split`), described in ``report["data"]``."""
    if len(recent) and recent.X.shape[1] != calibration.X.shape[1]:
        raise DataError(
            f"recent spectra have {recent.X.shape[1]} points, calibration "
            f"{calibration.X.shape[1]}: not the same wavelength grid"
        )
    train, holdout, source = holdout_split(calibration, recent, settings)
    report["data"] = {
        "n_calibration": len(calibration),
        "n_recent": len(recent),
        "n_train": len(train),
        "n_calibration_used": len(train)
        - len(recent)
        + (len(holdout) if source == "recent" else 0),
        "recent_min_share": settings.recent_min_share,
        "n_holdout": len(holdout),
        "holdout_source": source,
        "train_data_hash": data_hash(train.X, train.y),
        "holdout_sample_ids": list(holdout.sample_ids)[:1000],
    }
    return train, holdout


def _judge(
    version: str,
    holdout: Dataset,
    registry: ModelRegistry,
    settings: RetrainSettings,
    report: dict[str, Any],
) -> None:
    """Score candidate and champion on the holdout, decide, promote; all in ``report``."""
    key = registry.hmac_key
    cand = evaluate(registry.path(version), holdout, key)
    champ: dict[str, float] | None = None
    champion_path = registry.champion()
    if champion_path is not None:
        try:
            champ = evaluate(champion_path, holdout, key)
        except NirwatchError as exc:  # e.g. another grid: cannot be compared
            report["champion_error"] = str(exc)
    report["metrics"] = {"candidate": cand, "champion": champ}
    report["out_of_model_check"] = out_of_model_check(
        cand,
        settings.nominal_out_of_model,
        settings.out_of_model_alpha,
        settings.out_of_model_tolerance,
    )
    if champ is None and champion_path is not None and settings.policy == "auto":
        promote, why = False, "champion could not be scored on the holdout: approval needed"
    else:
        promote, why = decide(
            settings.policy, settings.margin, cand, champ,
            nominal_out_of_model=settings.nominal_out_of_model,
            alpha=settings.out_of_model_alpha,
            tolerance=settings.out_of_model_tolerance,
        )  # fmt: skip
    if promote:
        registry.promote(version)
    report["decision"] = "promoted" if promote else "candidate"
    report["why"] = why


def write_report(report: dict[str, Any], directory: Path, started: datetime) -> Path:
    """Write the report atomically as ``<directory>/retrain-<UTC time>-<id>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"retrain-{started:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:6]}.json"
    tmp = path.with_suffix(".tmp")
    # NaN and inf (e.g. the RMSE of a model that predicted nothing) become null.
    text = json.dumps(json_ready({**report, "path": str(path)}), indent=2, allow_nan=False)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return path
