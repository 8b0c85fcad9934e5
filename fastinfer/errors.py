"""Typed errors. Each names what was wrong and where (file, target, family, symbol).

All are ordinary exceptions: hashable, picklable (their ``args`` rebuild them), readable.
"""

from __future__ import annotations


class FastInferError(Exception):
    """Base of every error fastinfer raises on purpose."""


class ConfigError(FastInferError, ValueError):
    """A configuration key is unknown or has a wrong type or value."""


class ModelLoadError(FastInferError):
    """A model could not be found, trusted or opened.

    ``ModelLoadError(family, target, reason, path=None)`` as in the spec.
    """

    def __init__(self, family: str | None, target: str | None, reason: str, path: str | None = None):
        super().__init__(family, target, reason, path)
        self.family = family
        self.target = target
        self.reason = reason
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        where = f"target={self.target!r} family={self.family!r}"
        if self.path:
            where += f" file={self.path}"
        return f"{where}: {self.reason}"


class IntegrityError(ModelLoadError):
    """A checksum or signature did not verify under the configured policy."""


class SignatureError(IntegrityError):
    """A run's signature is missing, invalid, from another key, or a signed file changed.

    ``path`` names the signature file or the first file whose sha256 no longer matches.
    """


class MalformedFile(ValueError):
    """A model file's bytes are not what its library's parser reads safely (raised by the format
    checks in ``adapters/*_file.py``; the loader reports it as a ``ModelLoadError``)."""


class ConversionError(FastInferError):
    """A native model could not be turned into an ONNX graph."""


class InferenceError(FastInferError, ValueError):
    """Inputs to a prediction were unusable (shape, dtype, non-finite values, readiness)."""


class FeatureBuildError(FastInferError, ValueError):
    """OHLCV input or a feature request was unusable."""


class StateError(FastInferError, ValueError):
    """Saved state (buffers, features, lock) is corrupt, of another version, or mismatched."""
