"""What every model library's adapter provides, and the file formats they open.

An ``Adapter`` is the one home of a model library: the file formats its models are saved in
(opened from bytes already verified, never by path), how to run a loaded model, the feature
names and output columns the model records, how to turn it into an ONNX graph under the
converters' contract, the parity tolerance of that graph, and how the test writer trains one.
``fastinfer.families`` points each family at its adapter; nothing else switches on library or
family names.
"""

from __future__ import annotations

import io
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..converters import ConvertedGraph
    from ..families import Family

# File names TRAINING writes, one per format.
LIGHTGBM_TXT = "model.txt"
XGBOOST_JSON = "model.json"
XGBOOST_UBJ = "model.ubj"
CATBOOST_CBM = "model.cbm"
JOBLIB = "model.joblib"
PICKLE = "model.pkl"
KERAS = "model.keras"
KERAS_H5 = "model.h5"

# A trainer returns the file name it writes and a function writing the model there.
Trained = tuple[str, Callable[[Path], Any]]

# What a trainer may be asked to learn: ``y`` holds floats (regression) or integer class labels 0..K-1
# (binary: K = 2). An adapter lists the tasks its trainer takes in ``Adapter.tasks``.
REGRESSION, BINARY, MULTICLASS = "regression", "binary", "multiclass"


@dataclass(frozen=True)
class FileFormat:
    """One native file format: how to open it from bytes that passed the trust policy.

    ``executes_code``: opening runs code (pickles), so only verified bytes are ever opened.
    ``check``: an in-process structure check of unverified bytes (``None``, or why they are
    malformed), run before any native parser sees them. ``crash_probe``: the format's parser
    can crash the process on damaged input, so unverified bytes are also opened (and run) in a
    throw-away interpreter first (``fastinfer.native.probe_in_subprocess``).
    """

    name: str
    load: Callable[[bytes], Any]
    executes_code: bool = False
    check: Callable[[bytes], str | None] | None = None
    crash_probe: bool = False


def _load_joblib(data: bytes) -> Any:
    import joblib

    return joblib.load(io.BytesIO(data))


def _load_pickle(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


PICKLES = (
    FileFormat(JOBLIB, _load_joblib, executes_code=True),
    FileFormat(PICKLE, _load_pickle, executes_code=True),
)


def type_names(obj: Any) -> set[str]:
    """``"package.ClassName"`` for every class in the object's hierarchy."""
    return {f"{cls.__module__.split('.')[0]}.{cls.__name__}" for cls in type(obj).__mro__}


def generic_names(names: list[str]) -> bool:
    """Names libraries invent for unnamed columns (``Column_0``, ``f0``, ``0``) carry no order."""
    return all(n == f"Column_{i}" or n == f"f{i}" or n == str(i) for i, n in enumerate(names))


def as_output(out: Any) -> np.ndarray:
    """float64, (N,) for one column, (N, K) for several."""
    out = np.asarray(out, dtype=np.float64)
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def class_columns(labels: Iterable[Any]) -> tuple[str, ...]:
    """Output columns of a classifier: ``p_<label>`` per class, in the model's class order."""
    return tuple(f"p_{label}" for label in labels)


def task_of(y: np.ndarray) -> str:
    """The task a trainer gets: integer labels are classes (binary for two), floats are regression."""
    if np.asarray(y).dtype.kind not in "iub":
        return REGRESSION
    return BINARY if len(np.unique(y)) <= 2 else MULTICLASS


_MEMO: dict[tuple[int, str], Any] = {}


def memo(obj: Any, key: str, compute: Callable[[Any], Any]) -> Any:
    """``compute(obj)``, once per live object (dropped when it is collected): what a loaded model
    says about itself (objective, categorical columns) is read once, not on every predict."""
    slot = (id(obj), key)
    if slot in _MEMO:
        return _MEMO[slot]
    value = compute(obj)
    try:
        weakref.finalize(obj, _MEMO.pop, slot, None)
    except TypeError:  # not weak-referenceable: computed each time
        return value
    _MEMO[slot] = value
    return value


def predict_quietly(model: Any, X: np.ndarray) -> Any:
    """``model.predict(X)`` without sklearn's warning that a model fitted on a DataFrame got an
    array: the loader has already placed the columns in the model's order."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return model.predict(X)


class Adapter:
    """A model library. Subclasses set the class attributes and override what differs.

    ``accepts`` lists the native types as ``"package.ClassName"``; ``handles(obj)`` is true when
    one of the object's classes is listed. ``formats`` are the library's own file formats in
    order of preference (pickles included where the library's objects may be pickled).
    ``converter`` names the graph the adapter builds (recorded in the lock).
    """

    name: str = ""
    accepts: tuple[str, ...] = ()
    formats: tuple[FileFormat, ...] = ()
    tasks: tuple[str, ...] = (REGRESSION,)  # what ``train`` can learn (``task_of(y)``)
    reads_categories: bool = False  # ``train`` takes pandas category columns as categorical features
    # Relative parity tolerance of the converted graph: max |onnx - native| / output scale.
    tolerance: float = 1e-4
    libraries: tuple[str, ...] = ()  # converter libraries whose versions the lock records

    @property
    def converter(self) -> str:
        return self.name

    def handles(self, obj: Any) -> bool:
        return bool(type_names(obj) & set(self.accepts))

    def format(self, file_name: str) -> FileFormat | None:
        return next((f for f in self.formats if f.name == file_name), None)

    # -- a loaded model

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        """float64 (N,) for one output column, (N, K) for ``output_columns(model)``."""
        return as_output(predict_quietly(model, X))

    def library_predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        """The library's own public predict call, as the spec's seed code makes it (the baseline
        fastinfer is measured against); ``predict`` may take a faster route to the same values."""
        return self.predict(model, X)

    def feature_names(self, model: Any) -> list[str] | None:
        """The column order the model was trained with, where the model records it."""
        names = getattr(model, "feature_names_in_", None)
        if names is None:
            return None
        names = [str(n) for n in names]
        return None if generic_names(names) else names

    def output_columns(self, model: Any) -> tuple[str, ...]:
        """Names of ``predict``'s columns: ``("prediction",)`` for one, ``p_<label>`` per class."""
        return ("prediction",)

    def categorical_features(self, model: Any) -> dict[int, tuple[int, ...]]:
        """Column index -> the integer codes the model saw, for columns the model reads as
        categories (integer codes: see the adapters that have them); empty when none."""
        return {}

    # -- conversion and training

    def convert(self, model: Any, family: Family | None, n_features: int, seq_len: int | None) -> ConvertedGraph:
        """An ONNX graph under the converters' contract (``fastinfer.converters``)."""
        from ..errors import ConversionError

        raise ConversionError(f"no ONNX converter for {self.name} models")

    # Every adapter also defines the test writer's trainer for the families it serves:
    #   train(self, family, X, y, size: TrainSize, seed) -> Trained

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class PredictAPIAdapter(Adapter):
    """Any other object with a scikit-learn style ``predict(X)`` (a user's own estimator class):
    served natively as it is, never converted (``convert`` names what is supported)."""

    name = "predict-api"
    accepts = ("any object with a predict(X) method",)

    def handles(self, obj: Any) -> bool:
        return callable(getattr(obj, "predict", None))


PREDICT_API = PredictAPIAdapter()


def dump_joblib(model: Any) -> Callable[[Path], Any]:
    """A trainer's writer for pickled artifacts (``model.joblib``)."""
    import joblib

    return lambda path: joblib.dump(model, path)
