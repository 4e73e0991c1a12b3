"""A small 1-D convolutional network for NIR calibration, and its pickle-free inference wrapper.

The architecture follows Bjerrum, Glahder & Skov (2017), "Data augmentation of spectral data for
convolutional neural network (CNN) based deep chemometrics", arXiv:1710.01927: a short stack of
1-D convolutions with wide kernels (they act as learned smoothing/derivative filters), then
dense layers with dropout and one linear output. We add average pooling after the convolutions:
with ~200 calibration spectra, the flattened conv output feeding the first dense layer is where
the parameter count explodes, and pooling it keeps the network small enough not to memorise the
calibration set.

The network carries its own input standardisation (per-wavelength mean and standard deviation
of the preprocessed training spectra) and target scaling as buffers, so a state dict is all
that is needed to predict in the target's units.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Self

import numpy as np
import torch
from torch import nn

from nirwatch.chemometrics.cnn_fused import FusedEnsemble, fusable
from nirwatch.chemometrics.state import register_stateful
from nirwatch.errors import DataError, ModelError

Device = Literal["auto", "cpu", "cuda"]


def _leaky_relu() -> nn.Module:
    # Non-saturating on both sides (slope 0.1 below zero): a network built from it stays
    # piecewise linear beyond the calibrated range instead of flattening like ELU's negative
    # side does.
    return nn.LeakyReLU(0.1)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": _leaky_relu,
}


@dataclass(frozen=True)
class CNNConfig:
    """Architecture of :class:`SpectralCNN`; JSON-able through :meth:`to_dict`.

    Parameters
    ----------
    input_length : int, default 0
        Points per (preprocessed) spectrum; 0 = not known yet (training sets it from the
        data with :meth:`with_input_length`).
    conv_filters, kernel_sizes, strides : tuple of int
        One entry per convolution layer (valid padding).
    pool_size : int
        Average pooling after the last convolution (1 = none).
    dense_units : tuple of int
        Hidden dense layers, each preceded by dropout.
    dropout : float
        Dropout probability before each dense layer.
    activation : {"elu", "relu", "gelu", "leaky_relu"}
    linear_skip : bool
        Add a linear map from the pooled conv features straight to the output, beside the
        dense layers: a PLS-like linear path that keeps predictions outside the calibration
        range from flattening.
    """

    input_length: int = 0
    conv_filters: tuple[int, ...] = (8,)
    kernel_sizes: tuple[int, ...] = (32,)
    strides: tuple[int, ...] = (1,)
    pool_size: int = 16
    dense_units: tuple[int, ...] = (64, 16)
    dropout: float = 0.2
    # Leaky ReLU (slope 0.1 below zero) rather than ELU since shootout run 4: same RMSECV, and
    # a lower nested extrapolation error on all 4 CV seeds (docs/results/shootout.md).
    activation: str = "leaky_relu"
    linear_skip: bool = True

    def __post_init__(self) -> None:
        n = len(self.conv_filters)
        if n == 0 or len(self.kernel_sizes) != n or len(self.strides) != n:
            raise ModelError(
                "CNNConfig: conv_filters, kernel_sizes and strides need one entry per conv "
                f"layer (at least one), got {len(self.conv_filters)}, {len(self.kernel_sizes)}, "
                f"{len(self.strides)}"
            )
        ints = (*self.conv_filters, *self.kernel_sizes, *self.strides, self.pool_size)
        if any(int(v) < 1 for v in ints) or self.input_length < 0:
            raise ModelError("CNNConfig: sizes and strides must be >= 1, input_length >= 0")
        if any(int(v) < 1 for v in self.dense_units):
            raise ModelError(f"CNNConfig: dense_units must be >= 1, got {self.dense_units}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"CNNConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in _ACTIVATIONS:
            raise ModelError(
                f"CNNConfig: activation must be one of {sorted(_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        if self.input_length > 0 and self.conv_output_length() < 1:
            raise ModelError(
                f"CNNConfig: input_length {self.input_length} is too short for kernels "
                f"{self.kernel_sizes}, strides {self.strides} and pooling {self.pool_size}"
            )

    def conv_output_length(self) -> int:
        """Points per filter after the convolutions and pooling."""
        length = self.input_length
        for k, s in zip(self.kernel_sizes, self.strides, strict=True):
            length = (length - k) // s + 1
        return length // self.pool_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"CNNConfig: unknown keys {sorted(unknown)}")
        kw = dict(d)
        for key in ("conv_filters", "kernel_sizes", "strides", "dense_units"):
            if key in kw:
                kw[key] = tuple(int(v) for v in kw[key])
        return cls(**kw)

    def with_input_length(self, n: int) -> CNNConfig:
        """A copy for spectra of ``n`` points."""
        d = self.to_dict()
        d["input_length"] = int(n)
        return CNNConfig.from_dict(d)


class SpectralCNN(nn.Module):
    """1-D CNN regressor on preprocessed spectra.

    ``forward`` maps spectra (n, L) or (n, 1, L) to the *standardised* target (n,), which is
    what the training loss uses; :meth:`predict_units` returns the target in its own units.

    Buffers: ``x_mean``, ``x_scale`` (L,) input standardisation; ``y_mean``, ``y_scale`` (1,).
    """

    x_mean: torch.Tensor
    x_scale: torch.Tensor
    y_mean: torch.Tensor
    y_scale: torch.Tensor

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        if config.input_length < 1:
            raise ModelError("SpectralCNN: config.input_length is not set (use with_input_length)")
        self.config = config
        act = _ACTIVATIONS[config.activation]
        conv: list[nn.Module] = []
        in_ch = 1
        for f, k, s in zip(config.conv_filters, config.kernel_sizes, config.strides, strict=True):
            conv += [nn.Conv1d(in_ch, f, k, stride=s), act()]
            in_ch = f
        if config.pool_size > 1:
            conv.append(nn.AvgPool1d(config.pool_size))
        self.features = nn.Sequential(*conv)
        head: list[nn.Module] = [nn.Flatten()]
        prev = in_ch * config.conv_output_length()
        for units in config.dense_units:
            head += [nn.Dropout(config.dropout), nn.Linear(prev, units), act()]
            prev = units
        head.append(nn.Linear(prev, 1))
        self.head = nn.Sequential(*head)
        self.skip = (
            nn.Linear(in_ch * config.conv_output_length(), 1) if config.linear_skip else None
        )
        length = config.input_length
        self.register_buffer("x_mean", torch.zeros(length))
        self.register_buffer("x_scale", torch.ones(length))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_scale", torch.ones(1))

    def set_scaling(self, X: np.ndarray, y: np.ndarray) -> None:
        """Store per-wavelength mean/std of X (n, L) and mean/std of y (n,) as buffers."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.config.input_length:
            raise DataError(
                f"expected spectra of shape (n, {self.config.input_length}), got {X.shape}"
            )
        sd = X.std(axis=0)
        # A constant wavelength would divide by zero; leave it unscaled instead.
        sd[sd < 1e-12] = 1.0
        ys = float(y.std()) or 1.0
        with torch.no_grad():
            self.x_mean.copy_(torch.from_numpy(X.mean(axis=0)))
            self.x_scale.copy_(torch.from_numpy(sd))
            self.y_mean.fill_(float(y.mean()))
            self.y_scale.fill_(ys)

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if x.ndim == 2:
            x = x.unsqueeze(1)
        if x.ndim != 3 or x.shape[1] != 1 or x.shape[2] != self.config.input_length:
            raise DataError(
                f"SpectralCNN: expected input (n, {self.config.input_length}) or "
                f"(n, 1, {self.config.input_length}), got {shape}"
            )
        return (x - self.x_mean) / self.x_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised prediction, shape (n,)."""
        features = self.features(self._standardise(x))
        out = self.head(features)
        if self.skip is not None:
            out = out + self.skip(features.flatten(1))
        return out.squeeze(1)

    def predict_units(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction in the target's units, shape (n,)."""
        return self.forward(x) * self.y_scale + self.y_mean

    def first_layer_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the first convolution and its activation, shape (n, filters, L')."""
        return self.features[1](self.features[0](self._standardise(x)))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {device!r} requested but CUDA is not available "
                f"(torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        return torch.device(device)
    raise ModelError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


#: Spectra per forward pass by device type when no chunk size is given. On CPU the conv
#: activations of a 256-spectrum chunk (256 x 8 x 619 float32, 5 MB) stay in cache: 2.6x faster
#: than chunks of 8192 on the 2-core development machine (145 -> 56 ms per 2,000 spectra, one
#: thread; see docs/results/throughput.md). The fused 5-network ensemble (cnn_fused.py): 10.5k,
#: 13.8k and 14.3k spectra per core-second at 128, 256 and 512 (same run, issue 16); 256 keeps
#: the smaller unit of work for 4 % less. A GPU wants large chunks to fill it.
DEFAULT_CHUNK_SIZE = {"cpu": 256, "cuda": 16384}


@register_stateful
class CNNPredictor:
    """Inference with one or several :class:`SpectralCNN` (an ensemble's mean).

    Parameters
    ----------
    members : sequence of SpectralCNN
        Trained networks sharing one config; their predictions are averaged.
    device : {"auto", "cpu", "cuda"}
    chunk_size : int, optional
        Spectra per forward pass; bounds memory for large batches. Default: the fastest size
        measured for the device type (:data:`DEFAULT_CHUNK_SIZE`).
    fuse : bool, default True
        On CPU, predict with the members folded into one :class:`FusedEnsemble` (built here,
        from the members' weights) when the architecture allows; the members themselves stay
        the reference (:meth:`predict_members`). CUDA keeps the members: the fused form has not
        been measured there.
    """

    def __init__(
        self,
        members: Sequence[SpectralCNN],
        device: str = "auto",
        chunk_size: int | None = None,
        fuse: bool = True,
    ) -> None:
        if not members:
            raise ModelError("CNNPredictor needs at least one network")
        configs = {json.dumps(m.config.to_dict(), sort_keys=True) for m in members}
        if len(configs) != 1:
            raise ModelError("CNNPredictor: all ensemble members must share one CNNConfig")
        if chunk_size is not None and chunk_size < 1:
            raise ModelError(f"chunk_size must be >= 1, got {chunk_size}")
        self.config = members[0].config
        self.device = resolve_device(device)
        if chunk_size is None:
            chunk_size = DEFAULT_CHUNK_SIZE.get(self.device.type, DEFAULT_CHUNK_SIZE["cuda"])
        self.chunk_size = int(chunk_size)
        self.members = [m.to(self.device).eval() for m in members]
        self.fused: FusedEnsemble | None = None
        if fuse and self.device.type == "cpu" and fusable(self.members):
            self.fused = FusedEnsemble(self.members).to(self.device)

    @property
    def input_length(self) -> int:
        """Points per preprocessed spectrum the networks expect."""
        return self.config.input_length

    def predict(self, X: Any) -> np.ndarray:
        """Ensemble-mean prediction for preprocessed spectra X (n, L); float64 (n,)."""
        if self.fused is None:
            return self.predict_members(X)
        return self._chunked(X, self.fused)

    def predict_members(self, X: Any) -> np.ndarray:
        """:meth:`predict` computed member by member: the reference the fused form must match."""

        def mean(chunk: torch.Tensor) -> torch.Tensor:
            total = self.members[0].predict_units(chunk)
            for member in self.members[1:]:
                total = total + member.predict_units(chunk)
            return total / len(self.members)

        return self._chunked(X, mean)

    def _chunked(self, X: Any, forward: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[1] != self.input_length:
            raise DataError(
                f"CNNPredictor: expected spectra of shape (n, {self.input_length}), got {arr.shape}"
            )
        out = np.empty(arr.shape[0], dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, arr.shape[0], self.chunk_size):
                chunk = torch.as_tensor(
                    np.ascontiguousarray(arr[start : start + self.chunk_size], dtype=np.float32),
                    device=self.device,
                )
                out[start : start + chunk.shape[0]] = forward(chunk).double().cpu()
        return out

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays keyed ``member.<i>.<param>`` (safetensors-ready) and JSON-able metadata."""
        arrays: dict[str, np.ndarray] = {}
        for i, member in enumerate(self.members):
            for name, tensor in member.state_dict().items():
                arrays[f"member.{i}.{name}"] = tensor.detach().cpu().numpy().copy()
        meta = {
            "class": type(self).__name__,
            "config": self.config.to_dict(),
            "n_members": len(self.members),
        }
        return arrays, meta

    @classmethod
    def from_state(
        cls,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        device: str = "auto",
        chunk_size: int | None = None,
    ) -> Self:
        """Rebuild from :meth:`to_state` output; missing or unexpected tensors are an error."""
        if meta.get("class", cls.__name__) != cls.__name__:
            raise ModelError(f"state is for {meta.get('class')!r}, not {cls.__name__}")
        try:
            config = CNNConfig.from_dict(meta["config"])
            n_members = int(meta["n_members"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"CNNPredictor state: bad metadata ({exc})") from exc
        members = []
        for i in range(n_members):
            net = SpectralCNN(config)
            prefix = f"member.{i}."
            state = {
                k[len(prefix) :]: torch.from_numpy(np.asarray(v))
                for k, v in arrays.items()
                if k.startswith(prefix)
            }
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelError(f"CNNPredictor state: member {i} does not match ({exc})") from exc
            members.append(net)
        return cls(members, device=device, chunk_size=chunk_size)
