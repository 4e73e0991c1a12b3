"""A trained CNN (or K-fold ensemble) together with the preprocessing it was trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import torch

from nirwatch.chemometrics.cnn import CNNPredictor
from nirwatch.chemometrics.selection import WavelengthRange
from nirwatch.chemometrics.state import apply_steps, dump_steps, load_steps

__all__ = ["FittedCNN"]


@dataclass
class FittedCNN:
    """A trained CNN (or ensemble) with the preprocessing it was trained on.

    Attributes
    ----------
    steps : list of fitted transformers applied to raw spectra before the network
    predictor : CNNPredictor
    history : list (one per member) of list of dict
        Per epoch: ``epoch``, ``train_loss`` (standardised MSE), ``val_rmse``, ``lr``,
        ``seconds``.
    best_epochs : list of int
        The restored epoch of each member.
    train_seconds : float
    oof_pred : ndarray (n,), optional
        Held-out predictions of the calibration spectra (ensemble only).
    """

    steps: list[Any]
    predictor: CNNPredictor
    history: list[list[dict[str, float]]] = field(default_factory=list)
    best_epochs: list[int] = field(default_factory=list)
    train_seconds: float = 0.0
    oof_pred: np.ndarray | None = None

    def preprocess(self, X: Any) -> np.ndarray:
        """Raw spectra (n, p) to the network's input (n, L)."""
        return apply_steps(self.steps, np.asarray(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predictions in the target's units for raw spectra (n, p); float64 (n,)."""
        return self.predictor.predict(self.preprocess(X))

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Preprocessing and network tensors in one flat dict, plus JSON-able metadata."""
        step_arrays, step_meta = dump_steps(self.steps, prefix="cnn_steps")
        net_arrays, net_meta = self.predictor.to_state()
        meta = {
            "class": type(self).__name__,
            "steps": step_meta,
            "predictor": net_meta,
            "best_epochs": list(self.best_epochs),
            "train_seconds": self.train_seconds,
        }
        return {**step_arrays, **net_arrays}, meta

    @classmethod
    def from_state(
        cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], device: str = "auto"
    ) -> Self:
        """Rebuild from :meth:`to_state` output (history is not stored)."""
        steps = load_steps(arrays, meta["steps"])
        net_arrays = {k: v for k, v in arrays.items() if k.startswith("member.")}
        predictor = CNNPredictor.from_state(net_arrays, meta["predictor"], device=device)
        return cls(
            steps=steps,
            predictor=predictor,
            best_epochs=list(meta.get("best_epochs", [])),
            train_seconds=float(meta.get("train_seconds", 0.0)),
        )

    def first_layer_response(
        self, X: Any, wavelengths: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The paper's kernel figure: the first conv layer on the mean preprocessed spectrum.

        Parameters
        ----------
        X : array-like (n, p), raw calibration spectra
        wavelengths : array-like (p,)

        Returns
        -------
        activations : ndarray (filters, L'), of the first network
        reference : ndarray (L,), the mean preprocessed spectrum (the network's input)
        wavelengths : ndarray (L,), after any wavelength selection
        """
        reference = self.preprocess(X).mean(axis=0)
        net = self.predictor.members[0]
        device = next(net.parameters()).device
        with torch.inference_mode():
            x = torch.as_tensor(reference[None], dtype=torch.float32, device=device)
            activations = net.first_layer_activations(x)[0].cpu().numpy()
        wl = np.asarray(wavelengths, dtype=float)
        for step in self.steps:
            if isinstance(step, WavelengthRange):
                wl = step.wavelengths_out_
        return activations, reference, wl
