"""Native loaders, one per file format, and the one adapter that runs a native model.

Model libraries are imported only here and only when a model of theirs is opened or run,
so a tree-only run never pays the TensorFlow import.

``native_predict(model, X)`` returns float64 of shape (N,) for point models, (N, 2)
``[loc, scale]`` for NGBoost (Normal) and (N, Q) for quantile models (one column per
quantile, in the order the artifact lists them).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import families as fam

# ---------------------------------------------------------------- loaders (one per format)


def check_lightgbm_text(text: str) -> str | None:
    """Why a LightGBM model.txt is malformed, or None.

    LightGBM's C++ parser trusts the file: a truncated model.txt segfaults the process and a
    damaged key aborts it (std::terminate), so the structure is checked here first: the
    header, ``tree_sizes`` against the tree blocks, and every tree's arrays (lengths, numbers,
    child and feature indices in range).
    """
    head, sep, rest = text.partition("\nTree=")
    if not text.startswith("tree\n") or not sep:
        return "no LightGBM header or no trees"
    trees_text, sep, _ = ("Tree=" + rest).partition("\nend of trees")
    if not sep:
        return "truncated: no 'end of trees' marker"
    header = dict(line.partition("=")[::2] for line in head.splitlines()[1:] if "=" in line)
    try:
        n_features = int(header["max_feature_idx"]) + 1
        sizes = [int(x) for x in header["tree_sizes"].split()] if "tree_sizes" in header else None
    except (KeyError, ValueError):
        return "header lacks a valid max_feature_idx / tree_sizes"
    blocks = [b for b in trees_text.split("\n\n") if b.strip()]
    if sizes is not None and (len(sizes) != len(blocks) or sum(sizes) != len(trees_text.encode()) + 1):
        return f"tree_sizes lists {len(sizes)} trees of {sum(sizes)} bytes, the file has {len(blocks)}"
    for k, block in enumerate(blocks):
        fields = dict(line.partition("=")[::2] for line in block.splitlines())
        try:
            leaves, n_cat = int(fields["num_leaves"]), int(fields.get("num_cat", "0"))
            arrays = (
                {
                    name: fields[name].split()
                    for name in ("split_feature", "threshold", "decision_type", "left_child", "right_child")
                }
                if leaves > 1
                else {}
            )
            leaf_value = [float(x) for x in fields["leaf_value"].split()]
            float(fields.get("shrinkage", "1"))
            nums = {name: [float(x) for x in values] for name, values in arrays.items()}
        except (KeyError, ValueError):
            return f"tree {k}: missing or non-numeric fields"
        if leaves < 1 or n_cat < 0 or len(leaf_value) != leaves:
            return f"tree {k}: num_leaves={leaves} but {len(leaf_value)} leaf values"
        if any(len(v) != leaves - 1 for v in nums.values()):
            return f"tree {k}: split arrays are not num_leaves - 1 long"
        for name in ("left_child", "right_child"):
            if any(not (-leaves <= c < leaves - 1) or c != int(c) for c in nums.get(name, ())):
                return f"tree {k}: {name} index out of range"
        if any(not (0 <= f < n_features) or f != int(f) for f in nums.get("split_feature", ())):
            return f"tree {k}: split_feature out of range"
        if n_cat and len(fields.get("cat_boundaries", "").split()) != n_cat + 1:
            return f"tree {k}: cat_boundaries do not match num_cat"
    # A parameters block cut short makes the parser read past the text: a crash or not,
    # depending on what lies beyond (so a probe alone cannot be relied on for it).
    _, params, tail = text.partition("\nparameters:\n")
    if params and "\nend of parameters" not in tail:
        return "truncated: 'parameters:' without 'end of parameters'"
    return None


def _lightgbm_text(data: bytes) -> tuple[str | None, str | None]:
    """(text, None) for a well-formed LightGBM model.txt, else (None, why)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not a LightGBM text model (byte {exc.start} is not UTF-8)"
    problem = check_lightgbm_text(text)
    return (None, f"malformed LightGBM model ({problem})") if problem else (text, None)


def _load_lightgbm_bytes(data: bytes) -> Any:
    import lightgbm

    text, problem = _lightgbm_text(data)
    if problem:
        raise ValueError(problem)
    return lightgbm.Booster(model_str=text)  # the very text that was checked


def precheck(name: str, data: bytes | None) -> str | None:
    """Why ``data`` (a ``name`` file) is malformed by the checks that run in-process, or None."""
    return _lightgbm_text(data)[1] if name == fam.LIGHTGBM_TXT and data is not None else None


def _load_lightgbm(path: Path) -> Any:
    return _load_lightgbm_bytes(path.read_bytes())


def _load_xgboost(path: Path) -> Any:
    import xgboost

    model = xgboost.XGBRegressor()
    model.load_model(str(path))
    return model


def _load_catboost(path: Path) -> Any:
    import catboost

    model = catboost.CatBoostRegressor()
    model.load_model(str(path), format="cbm")
    return model


def _load_joblib_bytes(data: bytes) -> Any:
    import io

    import joblib

    return joblib.load(io.BytesIO(data))


def _load_pickle_bytes(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


def _load_joblib(path: Path) -> Any:
    return _load_joblib_bytes(path.read_bytes())


def _load_pickle(path: Path) -> Any:
    return _load_pickle_bytes(path.read_bytes())


def _load_keras(path: Path) -> Any:
    import keras

    # safe_mode refuses lambda layers (arbitrary code); compile=False: inference only.
    return keras.models.load_model(str(path), compile=False, safe_mode=True)


def _load_keras_h5(path: Path) -> Any:
    import keras

    return keras.models.load_model(str(path), compile=False)


LOADERS: dict[str, Callable[[Path], Any]] = {
    fam.LIGHTGBM_TXT: _load_lightgbm,
    fam.XGBOOST_JSON: _load_xgboost,
    fam.XGBOOST_UBJ: _load_xgboost,
    fam.CATBOOST_CBM: _load_catboost,
    fam.JOBLIB: _load_joblib,
    fam.PICKLE: _load_pickle,
    fam.KERAS: _load_keras,
    fam.KERAS_H5: _load_keras_h5,
}


# Formats opened from bytes already in memory: the loader hashes those bytes and opens the
# same ones (a pickle must never be re-read from disk after its check).
BYTES_LOADERS: dict[str, Callable[[bytes], Any]] = {
    fam.LIGHTGBM_TXT: _load_lightgbm_bytes,
    fam.JOBLIB: _load_joblib_bytes,
    fam.PICKLE: _load_pickle_bytes,
}

# Formats whose parser crashes the process (SIGSEGV) on some damaged files that get past the
# in-process checks, found by fuzzing truncations and byte flips (1,500 cases each): LightGBM
# text (~50 crashes; one kind, a parameters block cut short, crashes only sometimes and is
# refused by the structure check instead), XGBoost JSON (e.g. a negative node index; 5) and
# UBJ. CatBoost's binary parser was not fuzzed: probed too, to be safe. Keras (.keras is a zip
# read by Python, .h5 is HDF5 with its own checks) is not: a probe costs a fresh interpreter
# importing the library (~1 s; seconds for TensorFlow).
PROBED_FORMATS = frozenset({fam.LIGHTGBM_TXT, fam.XGBOOST_JSON, fam.XGBOOST_UBJ, fam.CATBOOST_CBM})


def load_native(path: Path) -> Any:
    """Open a model file with the loader for its format (no integrity checks here: see loader)."""
    return LOADERS[path.name](path)


def load_native_bytes(name: str, data: bytes) -> Any:
    """Open a model from bytes already read and checked; ``name`` is its file name (the format)."""
    return BYTES_LOADERS[name](data)


_PROBE = (
    "import sys, pathlib; from fastinfer import native; path = pathlib.Path(sys.argv[1]); "
    "native.load_native_bytes(path.name, sys.stdin.buffer.read()) if path.name in native.BYTES_LOADERS "
    "else native.load_native(path)"
)


def probe_in_subprocess(path: Path, data: bytes | None = None, timeout: float = 120.0) -> str | None:
    """Open ``path`` in a throw-away interpreter first; why it failed there, or None.

    For unverified files of ``PROBED_FORMATS``: a parser that segfaults or aborts on a damaged
    file then takes down the probe, not the trading process. Formats with a bytes loader are
    probed on ``data``, the very bytes the caller will open (sent on stdin); others by path.
    The child gets the caller's ``sys.path`` (so it imports the same fastinfer). Never for
    pickles (they would run their code in the probe too).
    """
    import os
    import subprocess

    path = Path(path)
    if path.name in fam.PICKLE_FORMATS:
        raise ValueError("pickles are never probed: opening one runs its code")
    if path.name in BYTES_LOADERS and data is None:
        data = path.read_bytes()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path)], input=data or b"", capture_output=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return f"opening it did not finish within {timeout:g} s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        import signal

        return f"the native library crashed opening it ({signal.Signals(-done.returncode).name})"
    last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
    return f"cannot open: {last[0][:200]}"


# ---------------------------------------------------------------- what kind of object is it


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


def is_keras(obj: Any) -> bool:
    if "keras" not in sys.modules:
        return False
    import keras

    return isinstance(obj, keras.Model)


def is_quantile_set(obj: Any) -> bool:
    """The quantile LightGBM artifact: ``{"quantiles": [...], "models": [...]}``."""
    return isinstance(obj, dict) and set(obj) >= {"quantiles", "models"}


def is_ngboost(obj: Any) -> bool:
    return _module_of(obj) == "ngboost"


# ---------------------------------------------------------------- feature order the model records


def _generic_names(names: list[str]) -> bool:
    """Names libraries invent for unnamed columns carry no order information."""
    return all(n == f"Column_{i}" or n == f"f{i}" or n == str(i) for i, n in enumerate(names))


def feature_names(obj: Any) -> list[str] | None:
    """The column order the model was trained with, where the model itself records it."""
    if is_quantile_set(obj):
        return feature_names(obj["models"][0]) if obj["models"] else None
    names = None
    if _module_of(obj) == "lightgbm":
        booster = obj if hasattr(obj, "feature_name") else getattr(obj, "booster_", None)
        names = booster.feature_name() if booster is not None else None
    elif _module_of(obj) == "xgboost":
        booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
        names = booster.feature_names
    elif _module_of(obj) == "catboost":
        names = obj.feature_names_
    elif hasattr(obj, "feature_names_in_"):
        names = obj.feature_names_in_
    if names is None:
        return None
    names = [str(n) for n in names]
    return None if _generic_names(names) else names


# ---------------------------------------------------------------- running it


def _predict_keras(model: Any, X: np.ndarray) -> np.ndarray:
    # __call__ rather than model.predict: same weights and kernels without the
    # per-call tf.data pipeline (~100 ms), which Keras recommends for small batches.
    return np.asarray(model(X.astype(np.float32, copy=False), training=False), dtype=np.float64)


def native_predict(model: Any, X: np.ndarray) -> np.ndarray:
    """Run any supported native model; float64 (N,), or (N, K) for multi-output families."""
    if is_quantile_set(model):
        return np.column_stack([native_predict(m, X) for m in model["models"]])
    if is_ngboost(model):
        params = model.pred_dist(X).params
        return np.column_stack([params["loc"], params["scale"]]).astype(np.float64)
    if is_keras(model):
        out = _predict_keras(model, X)
    elif _module_of(model) == "xgboost" and not hasattr(model, "get_booster"):
        import xgboost

        out = model.predict(xgboost.DMatrix(X, feature_names=model.feature_names))
    else:
        with warnings.catch_warnings():
            # sklearn warns when a model fitted on a DataFrame gets an array: the loader
            # has already placed the columns in the model's order.
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            out = model.predict(X)
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    return out


def output_columns(model: Any) -> tuple[str, ...]:
    """Names of the columns ``native_predict`` returns."""
    if is_quantile_set(model):
        return tuple(f"q{float(q):g}" for q in model["quantiles"])
    if is_ngboost(model):
        return ("loc", "scale")
    return ("prediction",)
