"""fastinfer: verified ONNX graphs, numba kernels and batched ONNX Runtime for trading models.

The public API is the spec's (``ModelLoader``, ``InferenceEngine``, ``FeatureBuilder``,
``SeqBufferManager``, ``ModelLoadError``) plus the live predictor and ``warmup``.
"""

import os

# OpenMP worker threads (numba's parallel tree kernels, LightGBM, XGBoost) sleep after a parallel
# region instead of spinning: spinning steals the trading loop's core (as executor.allow_spinning
# does for ONNX Runtime). Read when the OpenMP runtime loads, so set before it; a caller's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .buffers import SeqBufferManager
from .engine import InferenceEngine
from .errors import (
    ConfigError,
    ConversionError,
    FeatureBuildError,
    InferenceError,
    IntegrityError,
    ModelLoadError,
    StateError,
)
from .features import StreamingFeatures
from .loader import LoadedModel, ModelLoader

__all__ = [
    "ConfigError",
    "ConversionError",
    "FeatureBuildError",
    "FeatureBuilder",
    "InferenceEngine",
    "InferenceError",
    "IntegrityError",
    "LivePredictor",
    "LoadedModel",
    "ModelLoadError",
    "ModelLoader",
    "SeqBufferManager",
    "StateError",
    "StreamingFeatures",
    "warmup",
]


def __getattr__(name: str):
    if name == "LivePredictor":  # imports onnxruntime: only when asked for
        from .predictor import LivePredictor

        return LivePredictor
    if name == "FeatureBuilder":  # imports pandas, which the live path does not need
        from .feature_builder import FeatureBuilder

        return FeatureBuilder
    raise AttributeError(f"module 'fastinfer' has no attribute {name!r}")


def warmup() -> None:
    """Compile every numba kernel now (from numba's on-disk cache when warm), not on the first bar."""
    from . import features
    from .kernels import forest, ring, screen, spsc

    for kernel in (features, ring, spsc, forest, screen):
        kernel.warmup()
