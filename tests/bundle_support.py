"""Small but real stand-ins for a model bundle's components, and a bundle made of them.

Fitted least squares, a mean-centring step and PCA limits that follow the ``to_state`` /
``from_state`` contract, so the bundle format is tested independently of the chemometrics
modules (tests/test_bundle_real.py uses the real ones). Registered by name on import, as
a bundle's components must be.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nirwatch.chemometrics.state import register_stateful
from nirwatch.models.bundle import BundleContents, data_hash


@register_stateful
class Centre:
    """Subtracts the training mean spectrum."""

    def fit(self, X: np.ndarray) -> Centre:
        self.mean_ = X.mean(axis=0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X - self.mean_

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"mean_": self.mean_}, {}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Centre:
        obj = cls()
        obj.mean_ = arrays["mean_"]
        return obj


@register_stateful
class LinearModel:
    """y = X @ coef + intercept; ``scale`` multiplies predictions (to fake a bad CNN)."""

    def __init__(self, scale: float = 1.0, fail: bool = False) -> None:
        self.scale = scale
        self.fail = fail

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearModel:
        A = np.c_[X, np.ones(len(X))]
        sol = np.linalg.lstsq(A, y, rcond=None)[0]
        self.coef_, self.intercept_ = sol[:-1], float(sol[-1])
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("boom")
        return self.scale * (X @ self.coef_ + self.intercept_)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {"coef_": self.coef_, "intercept_": np.array(self.intercept_)}
        arrays["scale"] = np.array(self.scale)  # an array: JSON cannot hold the NaN tests use
        return arrays, {"fail": self.fail}

    @classmethod
    def from_state(
        cls, arrays: dict[str, np.ndarray], meta: dict[str, Any], device: str = "cpu"
    ) -> LinearModel:
        obj = cls(float(arrays["scale"].item()), meta["fail"])
        obj.coef_, obj.intercept_ = arrays["coef_"], float(arrays["intercept_"].item())
        return obj


@register_stateful
class PCAStats:
    """T² and Q against a 2-component PCA, limits at the training maximum."""

    def fit(self, X: np.ndarray) -> PCAStats:
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        self.loadings_ = vt[:2].T
        self.var_ = (s[:2] ** 2) / (len(X) - 1)
        t2, q = self.t2_q(X)
        self.t2_limit_99_, self.q_limit_99_ = float(t2.max()), float(q.max())
        return self

    def t2_q(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        T = X @ self.loadings_
        resid = X - T @ self.loadings_.T
        return (T**2 / self.var_).sum(axis=1), (resid**2).sum(axis=1)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"loadings_": self.loadings_, "var_": self.var_}, {
            "t2_limit_99_": self.t2_limit_99_,
            "q_limit_99_": self.q_limit_99_,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> PCAStats:
        obj = cls()
        obj.loadings_, obj.var_ = arrays["loadings_"], arrays["var_"]
        obj.t2_limit_99_, obj.q_limit_99_ = meta["t2_limit_99_"], meta["q_limit_99_"]
        return obj


WL = np.arange(600.0, 640.0, 2.0)  # 20 points


def make_data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 10, n)
    X = np.outer(y, np.sin(WL / 10)) + rng.normal(0, 0.01, (n, WL.size)) + 1.0
    return X, y


def make_contents(
    *, cnn: LinearModel | None = None, extra: dict[str, bytes] | None = None
) -> BundleContents:
    X, y = make_data()
    centre = Centre().fit(X)
    pls = LinearModel().fit(X, y)
    return BundleContents(
        target="assay",
        unit="mg",
        wavelengths=WL,
        data_hash=data_hash(X, y),
        pls=pls,
        statistics=PCAStats().fit(centre.transform(X)),
        statistics_steps=[centre],
        cnn=cnn,
        cnn_steps=[centre] if cnn is not None else [],
        fallback_limit=1.0,
        metrics={"rmsecv": 0.1, "rmsep": None},
        extra_files=extra or {},
    )
