"""Simulated inline NIR probes on a tablet press: Beer–Lambert mixtures with scatter and drift.

Each tablet is a mixture of an active ingredient (API) and three excipients. Its absorbance
spectrum follows Beer–Lambert, ``A(λ) = L · Σ_k f_k ε_k(λ)`` with mass fractions ``f_k``
(closure: Σ f_k = 1) and smooth synthetic component spectra ``ε_k`` built from Gaussian and
Lorentzian bands at plausible NIR overtone and combination positions. Diffuse reflectance adds
multiplicative and additive scatter and a baseline slope, the detector adds white noise
(the usual NIR measurement model that MSC/EMSC invert: Martens & Stark 1991). Everything is
vectorised and seeded; a batch of thousands of spectra takes milliseconds.

Drift can be switched on from an onset (seconds since the start or sample index):

``baseline``         a curved baseline growing over ``ramp_s`` (film on the probe window)
``excipient_lot``    a new cellulose lot: its bands shift and broaden (step change)
``detector_ageing``  detector noise grows and the gain decays, more at long wavelengths
``content_shift``    the API content moves away from nominal (step change)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from nirwatch.errors import DataError
from nirwatch.grid import wavelengths as grid_wavelengths
from nirwatch.simulation.tablet_spectra import component_spectra, water_spectrum

GRID = "lin:600:1898:2"
DriftKind = Literal["baseline", "excipient_lot", "detector_ageing", "content_shift"]
DRIFT_KINDS: tuple[str, ...] = get_args(DriftKind)
#: Kinds that switch on at once (a new lot, a changed blend); the others ramp up.
STEP_KINDS = ("excipient_lot", "content_shift")


@dataclass(frozen=True, slots=True)
class Drift:
    """A drift switched on at ``onset_s`` seconds (or ``onset_index`` samples) into the run.

    ``magnitude`` scales the effect (1 = clearly visible to T²/Q within minutes); ramped kinds
    reach full size ``ramp_s`` seconds after onset.
    """

    kind: DriftKind
    onset_s: float | None = None
    onset_index: int | None = None
    magnitude: float = 1.0
    ramp_s: float = 60.0

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise DataError(f"drift kind must be one of {DRIFT_KINDS}, got {self.kind!r}")
        if (self.onset_s is None) == (self.onset_index is None):
            raise DataError("give exactly one of onset_s and onset_index for a drift")

    def progress(self, indices: np.ndarray, rate_hz: float) -> np.ndarray:
        """Drift strength in [0, 1] for samples ``indices`` of a probe at ``rate_hz``, shape (n,)."""
        onset = self.onset_s if self.onset_s is not None else float(self.onset_index or 0) / rate_hz
        elapsed = np.asarray(indices, dtype=float) / rate_hz - onset
        started = elapsed >= -1e-9
        if self.kind in STEP_KINDS or self.ramp_s <= 0:
            return started.astype(float)
        return np.where(started, np.clip(elapsed / self.ramp_s, 0.0, 1.0), 0.0)


@dataclass(frozen=True, slots=True)
class TabletLine:
    """Formulation and measurement constants of the simulated line.

    ``nominal_mg`` of API in a ``tablet_mg`` tablet; the excipients share the rest in the
    ratio ``excipient_ratio`` (cellulose : lactose : Mg stearate).
    """

    nominal_mg: float = 200.0
    tablet_mg: float = 800.0
    content_rsd: float = 0.03
    excipient_ratio: tuple[float, float, float] = (0.62, 0.365, 0.015)
    excipient_jitter: float = 0.03
    lab_sd_mg: float = 1.5
    path_length: float = 1.0
    multiplicative_sd: float = 0.04
    additive_sd: float = 0.01
    slope_sd: float = 0.01  # absorbance per 1000 nm
    noise_sd: float = 1e-3
    particle_size_sd: float = 0.1
    moisture_sd: float = 0.01
    product: str = "tablet-200mg"


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One inline probe: its instrument id and spectra per second."""

    instrument_id: str
    rate_hz: float = 2.0


@dataclass(slots=True)
class SimulatedBatch:
    """Spectra of one probe with the truth behind them.

    Attributes
    ----------
    spectra : ndarray (n, n_points) float32
    content_mg : ndarray (n,)   true API content
    reference_mg : ndarray (n,) lab value: true content + lab noise
    indices : ndarray (n,)      sample index on this probe (0, 1, ...)
    times_s : ndarray (n,)      nominal acquisition time since the start, index / rate
    drift_progress : ndarray (n,)
    """

    instrument_id: str
    sample_ids: list[str]
    indices: np.ndarray
    times_s: np.ndarray
    spectra: np.ndarray
    content_mg: np.ndarray
    reference_mg: np.ndarray
    drift_progress: np.ndarray


def _mix(
    line: TabletLine,
    content_mg: np.ndarray,
    rng: np.random.Generator,
    pure: np.ndarray,
    pure_new_lot: np.ndarray | None = None,
    new_lot: np.ndarray | None = None,
) -> np.ndarray:
    """Beer–Lambert mixture spectra for the given API contents, shape (n, n_points)."""
    n = content_mg.size
    f_api = content_mg / line.tablet_mg
    ratio = np.asarray(line.excipient_ratio) * (
        1.0 + line.excipient_jitter * rng.standard_normal((n, 3))
    )
    ratio = np.clip(ratio, 1e-6, None)
    ratio /= ratio.sum(axis=1, keepdims=True)
    fractions = np.column_stack([f_api, (1.0 - f_api)[:, None] * ratio])
    absorbance = line.path_length * fractions @ pure
    if pure_new_lot is not None and new_lot is not None and new_lot.any():
        lot = line.path_length * fractions @ pure_new_lot
        absorbance = np.where(new_lot[:, None] > 0, lot, absorbance)
    return absorbance


def _measure(
    line: TabletLine,
    absorbance: np.ndarray,
    wl: np.ndarray,
    rng: np.random.Generator,
    gain: np.ndarray | float = 1.0,
    noise_scale: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Moisture, scatter, baseline slope and detector noise on top of the chemical absorbance.

    Scatter follows the MSC/EMSC model ``a + c·λ + b·A`` with a particle-size term
    ``b·(λ/λ0)^-β`` (shorter wavelengths scatter more), and free moisture adds a water
    spectrum the calibration has to learn to ignore. Computed in float32 for speed.
    """
    n, p = absorbance.shape
    f32 = np.float32
    x = ((wl - wl.mean()) / 1000.0).astype(f32)
    b = (1.0 + line.multiplicative_sd * rng.standard_normal((n, 1), dtype=f32)).astype(f32)
    beta = (line.particle_size_sd * rng.standard_normal((n, 1), dtype=f32)).astype(f32)
    a = line.additive_sd * rng.standard_normal((n, 1), dtype=f32)
    c = line.slope_sd * rng.standard_normal((n, 1), dtype=f32)
    moisture = line.moisture_sd * rng.standard_normal((n, 1), dtype=f32)
    log_rel = np.log(wl / wl.mean()).astype(f32)
    out = b * np.exp(-beta * log_rel) * (np.asarray(gain, dtype=f32) * absorbance.astype(f32))
    out += moisture * water_spectrum(wl).astype(f32)
    out += a + c * x
    noise = rng.standard_normal((n, p), dtype=f32)
    noise *= f32(line.noise_sd) * np.asarray(noise_scale, dtype=f32).reshape(-1, 1)
    out += noise
    return out


class TabletLineSimulator:
    """Several probes on one tablet line, each with its own sample counter and random stream.

    Parameters
    ----------
    probes : sequence of ProbeSpec
    drift : Drift, optional
        Applies to every probe, from its onset on.
    seed : int
    line : TabletLine
    grid : str
        Wavelength grid id (default the shootout's ``lin:600:1898:2``).
    """

    def __init__(
        self,
        probes: Sequence[ProbeSpec],
        *,
        drift: Drift | None = None,
        seed: int = 0,
        line: TabletLine | None = None,
        grid: str = GRID,
    ) -> None:
        if not probes:
            raise DataError("need at least one probe")
        ids = [p.instrument_id for p in probes]
        if len(set(ids)) != len(ids):
            raise DataError(f"probe instrument ids must be unique, got {ids}")
        self.probes = {p.instrument_id: p for p in probes}
        self.drift = drift
        self.line = line or TabletLine()
        self.grid = grid
        self.wavelengths = grid_wavelengths(grid)
        self._pure = component_spectra(self.wavelengths)
        self._pure_new_lot = None
        if drift is not None and drift.kind == "excipient_lot":
            self._pure_new_lot = component_spectra(
                self.wavelengths,
                cellulose_shift_nm=8.0 * drift.magnitude,
                cellulose_widen=1.0 + 0.15 * drift.magnitude,
            )
        # A film on the probe window: broad absorption rising towards short wavelengths.
        self._fouling = 0.03 + 0.10 * np.exp(-(self.wavelengths - self.wavelengths[0]) / 250.0)
        self._rngs = {pid: np.random.default_rng([seed, i]) for i, pid in enumerate(self.probes)}
        # Probes differ slightly from each other (window, fibre, detector): fixed per probe.
        self._probe_gain = {
            pid: 1.0 + 0.01 * self._rngs[pid].standard_normal() for pid in self.probes
        }
        self._next_index = dict.fromkeys(self.probes, 0)

    @property
    def n_points(self) -> int:
        return int(self.wavelengths.size)

    def next_batch(self, instrument_id: str, n: int) -> SimulatedBatch:
        """The next ``n`` spectra of one probe (advances its sample counter)."""
        start = self._next_index[instrument_id]
        self._next_index[instrument_id] = start + n
        return self._generate(instrument_id, np.arange(start, start + n))

    def _generate(self, instrument_id: str, indices: np.ndarray) -> SimulatedBatch:
        probe = self.probes[instrument_id]
        rng = self._rngs[instrument_id]
        line = self.line
        n = indices.size
        progress = (
            self.drift.progress(indices, probe.rate_hz) if self.drift is not None else np.zeros(n)
        )
        kind = self.drift.kind if self.drift is not None else None
        mag = self.drift.magnitude if self.drift is not None else 0.0
        nominal = np.full(n, line.nominal_mg)
        if kind == "content_shift":
            # +10 % of label claim at magnitude 1: outside a 95-105 % release window.
            nominal = nominal * (1.0 + 0.10 * mag * progress)
        content = nominal * (1.0 + line.content_rsd * rng.standard_normal(n))
        absorbance = _mix(
            line,
            content,
            rng,
            self._pure,
            self._pure_new_lot,
            progress if kind == "excipient_lot" else None,
        )
        gain: np.ndarray | float = self._probe_gain[instrument_id]
        noise_scale: np.ndarray | float = 1.0
        if kind == "detector_ageing":
            # InGaAs responsivity loss is largest at the long-wavelength edge.
            edge = (self.wavelengths - self.wavelengths[0]) / np.ptp(self.wavelengths)
            gain = gain * (1.0 - mag * progress[:, None] * (0.04 + 0.08 * edge))
            noise_scale = 1.0 + 9.0 * mag * progress
        spectra = _measure(line, absorbance, self.wavelengths, rng, gain, noise_scale)
        if kind == "baseline":
            spectra = spectra + (mag * progress[:, None] * self._fouling).astype(np.float32)
        reference = content + line.lab_sd_mg * rng.standard_normal(n)
        return SimulatedBatch(
            instrument_id=instrument_id,
            sample_ids=[f"{instrument_id}-{i:08d}" for i in indices],
            indices=indices,
            times_s=indices / probe.rate_hz,
            spectra=spectra.astype(np.float32),
            content_mg=content,
            reference_mg=reference,
            drift_progress=progress,
        )


def calibration_set(
    n: int,
    seed: int = 0,
    *,
    line: TabletLine | None = None,
    low: float = 0.8,
    high: float = 1.2,
    grid: str = GRID,
    lab_noise: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A designed calibration set: contents uniform in [low, high] × nominal, no drift.

    ``y`` is the true content; with ``lab_noise=True`` it is the lab's reference value as in
    practice (true content + lab noise of ``line.lab_sd_mg``), so that RMSECV and the lab
    residuals seen in production are comparable.

    Returns
    -------
    X : ndarray (n, n_points) float32
    y : ndarray (n,) API content in mg
    wavelengths : ndarray (n_points,) in nm
    """
    if n < 2:
        raise DataError(f"need at least 2 calibration samples, got {n}")
    line = line or TabletLine()
    rng = np.random.default_rng([seed, 1_000_003])
    wl = grid_wavelengths(grid)
    content = line.nominal_mg * rng.uniform(low, high, n)
    absorbance = _mix(line, content, rng, component_spectra(wl))
    # Probe-to-probe gain differences of the streaming simulator are within the calibration.
    gain = 1.0 + 0.01 * rng.standard_normal((n, 1))
    X = _measure(line, absorbance, wl, rng, gain)
    reference = content + line.lab_sd_mg * rng.standard_normal(n)
    return X.astype(np.float32), reference if lab_noise else content, wl
