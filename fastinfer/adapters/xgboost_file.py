"""XGBoost ``model.json`` / ``model.ubj``: read and checked here before XGBoost's parser sees
unverified bytes.

XGBoost's readers trust the file: its UBJ reader copies strings of whatever length the file states,
and a loaded tree is followed as stored, so a child index out of range, a cycle, or a split on
feature 5·10^7 of an 8-feature model crashes the process at predict time. ``read_model`` parses the
bytes the way XGBoost dispatches them (``Learner::LoadModel``: ``{`` then ``"`` is JSON, ``{`` then
a letter is UBJ) with the standard library's JSON parser or a small bounded UBJ reader, and
``check_model`` checks what prediction relies on: split features below ``num_feature``, children in
range forming a tree (no node reached twice), parents consistent, array lengths equal to
``num_nodes``, categorical segments inside the category list and codes in XGBoost's range, one
``tree_info`` class per tree, and sizes bounded.

Legacy binary models (XGBoost <= 1.x ``.model`` / ``.bin``, sometimes saved as ``model.json``) are
recognised by their header (``LearnerModelParamLegacy``, 136 bytes, then the objective and booster
names as length-prefixed strings) and refused with how to re-save them: XGBoost >= 3 reads none.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np

from ..errors import MalformedFile

LEGACY_MESSAGE = (
    "legacy XGBoost binary model: re-save it with XGBoost >= 1.0 as JSON/UBJ "
    "(`Booster.load_model(...).save_model('model.json')`)"
)
MAX_FEATURES = 1 << 24  # XGBoost keeps a dense float vector of num_feature per predicting thread
MAX_CLASSES = 1 << 16
MAX_NODES = 1 << 26  # per tree
MAX_CATEGORY = (1 << 24) - 1  # XGBoost's own limit on a category code (common/categorical.h)
_MAX_DEPTH = 64  # nesting of objects / arrays; an XGBoost model nests < 10 deep
_LEGACY_PARAM_BYTES = 136  # sizeof(LearnerModelParamLegacy)
_NAME = re.compile(rb"[a-z_]+(:[a-z_]+)?")


class Malformed(MalformedFile):
    """Why the bytes are not an XGBoost model its parser and predictor handle safely."""


# ---------------------------------------------------------------- formats


def is_legacy_binary(data: bytes) -> bool:
    """XGBoost's pre-JSON binary layout: [b"binf"] + the 136-byte parameter struct + the objective
    name (uint64 length + bytes, e.g. ``binary:logistic``) + the booster name (``gbtree``, ...)."""
    if data[:4] == b"binf":
        data = data[4:]
    at = _LEGACY_PARAM_BYTES
    names = []
    for _ in range(2):
        if len(data) < at + 8:
            return False
        (size,) = struct.unpack_from("<Q", data, at)
        if not 1 <= size <= 64 or len(data) < at + 8 + size:
            return False
        names.append(data[at + 8 : at + 8 + size])
        at += 8 + size
    return bool(_NAME.fullmatch(names[0])) and names[1] in (b"gbtree", b"gblinear", b"dart")


def model_format(data: bytes) -> str:
    """``json``, ``ubj`` or ``legacy``, as XGBoost dispatches (``Malformed`` for anything else)."""
    body = data[4:] if data[:4] == b"binf" else data
    if body[:1] == b"{":
        rest = body[1:].lstrip(b" \t\r\n\f\v")
        if rest[:1] == b'"':
            return "json"
        if rest[:1].isalpha():
            return "ubj"
    if is_legacy_binary(data):
        return "legacy"
    raise Malformed(f"not an XGBoost model (neither JSON, UBJ nor the legacy binary layout; {len(data)} bytes)")


# UBJ markers XGBoost reads: scalar values, and the element types of typed ("$") arrays.
_UBJ_SCALARS = {b"i": ">i1", b"U": ">u1", b"I": ">i2", b"l": ">i4", b"L": ">i8", b"d": ">f4", b"D": ">f8", b"C": ">i1"}
_UBJ_TYPED = {b"d": ">f4", b"D": ">f8", b"i": ">i1", b"U": ">u1", b"I": ">i2", b"l": ">i4", b"L": ">i8"}


class _UBJ:
    """XGBoost's UBJSON subset (``UBJReader``), big-endian, every length checked against the bytes
    left and nesting bounded. Typed arrays come back as numpy arrays."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise Malformed(f"UBJ: {n} bytes wanted at offset {self.at}, {len(self.data) - self.at} left")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def _count(self) -> int:
        if self._take(1) != b"L":
            raise Malformed(f"UBJ: a length at offset {self.at - 1} is not an int64")
        (n,) = struct.unpack(">q", self._take(8))
        return n

    def _string(self) -> str:
        n = self._count()
        return self._take(n).decode("utf-8", errors="replace")

    def value(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise Malformed(f"UBJ: nested deeper than {_MAX_DEPTH}")
        marker = self._take(1)
        if marker == b"{":
            out = {}
            while self.data[self.at : self.at + 1] != b"}":
                key = self._string()
                out[key] = self.value(depth + 1)
            self._take(1)
            return out
        if marker == b"[":
            return self._array(depth)
        if marker in _UBJ_SCALARS:
            dtype = np.dtype(_UBJ_SCALARS[marker])
            return np.frombuffer(self._take(dtype.itemsize), dtype)[0].item()
        if marker == b"S":
            return self._string()
        if marker in (b"T", b"F", b"Z"):
            return {b"T": True, b"F": False, b"Z": None}[marker]
        raise Malformed(f"UBJ: unknown marker {marker!r} at offset {self.at - 1}")

    def _array(self, depth: int) -> Any:
        head = self.data[self.at : self.at + 1]
        if head == b"$":
            self._take(1)
            kind = self._take(1)
            if kind not in _UBJ_TYPED or self._take(1) != b"#":
                raise Malformed(f"UBJ: typed array of {kind!r} is not one XGBoost reads")
            dtype = np.dtype(_UBJ_TYPED[kind])
            n = self._count()
            if n < 0 or n > (len(self.data) - self.at) // dtype.itemsize:
                raise Malformed(f"UBJ: typed array of {n} elements exceeds the bytes left")
            return np.frombuffer(self._take(n * dtype.itemsize), dtype).astype(dtype.newbyteorder("="))
        if head == b"#":
            self._take(1)
            n = self._count()
            if n < 0 or n > len(self.data) - self.at:  # every element takes at least one byte
                raise Malformed(f"UBJ: array of {n} elements exceeds the bytes left")
            return [self.value(depth + 1) for _ in range(n)]
        out = []
        while self.data[self.at : self.at + 1] != b"]":
            out.append(self.value(depth + 1))
        self._take(1)
        return out


def read_model(data: bytes) -> dict:
    """The model document of JSON or UBJ bytes, checked (``check_model``); ``Malformed`` otherwise."""
    kind = model_format(data)
    if kind == "legacy":
        raise Malformed(LEGACY_MESSAGE)
    body = data[4:] if data[:4] == b"binf" else data
    try:
        doc = json.loads(body) if kind == "json" else _UBJ(body).value()
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise Malformed(f"unreadable {kind.upper()}: {str(exc)[:120]}") from None
    except RecursionError:
        raise Malformed(f"{kind.upper()} nested too deep") from None
    check_model(doc)
    return doc


# ---------------------------------------------------------------- the model's structure


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            raise Malformed(f"no {'.'.join(path)}")
        obj = obj[key]
    return obj


def _int(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Malformed(f"{what} is not a number") from None
    if number != number or number != int(number) or not low <= number <= high:
        raise Malformed(f"{what} = {value!r} is not an integer in {low}..{high}")
    return int(number)


def _ints(values: Any, what: str, n: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise Malformed(f"{what} is not a list of numbers") from None
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        raise Malformed(f"{what} has {arr.size} values, {n} expected")
    if len(arr) and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
        raise Malformed(f"{what} holds a value that is not an integer")
    return arr.astype(np.int64)


# Vector-leaf (multi_strategy="multi_output_tree") trees as XGBoost 3 reads them; XGBoost 2.x wrote them
# without these, and XGBoost 3 dies (SIGSEGV, or an abort) opening such a file.
_VECTOR_LEAF_KEYS = ("loss_changes", "sum_hessian", "leaf_weights")


def _check_tree(k: int, tree: Any, n_features: int, n_groups: int, version: str) -> None:
    where = f"tree {k}"
    n = _int(_get(tree, "tree_param", "num_nodes"), f"{where}: num_nodes", 1, MAX_NODES)
    leaf_size = _int(tree["tree_param"].get("size_leaf_vector", 1), f"{where}: size_leaf_vector", 0, n_groups)
    missing = [key for key in _VECTOR_LEAF_KEYS if key not in tree]
    if leaf_size > 1 and missing:
        raise Malformed(
            f"{where}: a multi_strategy='multi_output_tree' (vector-leaf) tree without {', '.join(missing)}, "
            f"as XGBoost {version or '< 3'} saved them: XGBoost 3 cannot open such a file (it crashes); "
            "re-train the model with XGBoost >= 3"
        )
    left = _ints(_get(tree, "left_children"), f"{where}: left_children", n)
    right = _ints(_get(tree, "right_children"), f"{where}: right_children", n)
    parents = _ints(_get(tree, "parents"), f"{where}: parents", n)
    features = _ints(_get(tree, "split_indices"), f"{where}: split_indices", n)
    for name in ("split_conditions", "default_left", "loss_changes", "sum_hessian"):
        if len(_get(tree, name)) != n:
            raise Malformed(f"{where}: {name} has {len(tree[name])} values for {n} nodes")
    weights = tree.get("base_weights", [])
    if len(weights) not in (0, n, n * max(leaf_size, 1)):
        raise Malformed(f"{where}: base_weights has {len(weights)} values for {n} nodes")
    split_type = _ints(tree.get("split_type", np.zeros(n)), f"{where}: split_type", n)
    if ((split_type != 0) & (split_type != 1)).any():
        raise Malformed(f"{where}: split_type other than 0 (numeric) and 1 (categorical)")
    is_leaf = left == -1
    if (is_leaf != (right == -1)).any():
        node = int(np.flatnonzero(is_leaf != (right == -1))[0])
        raise Malformed(f"{where} node {node}: one child is -1 and the other is not")
    for name, children in (("left", left), ("right", right)):
        bad = np.flatnonzero(~is_leaf & ((children < 1) | (children >= n)))
        if len(bad):
            raise Malformed(f"{where} node {int(bad[0])}: {name} child {int(children[bad[0]])} out of range 1..{n - 1}")
    bad = np.flatnonzero(~is_leaf & ((features < 0) | (features >= n_features)))
    if len(bad):
        node = int(bad[0])
        raise Malformed(f"{where} node {node}: split feature {int(features[node])} >= num_feature {n_features}")
    seen = np.zeros(n, dtype=bool)
    seen[0] = True
    stack = [0]
    while stack:
        node = stack.pop()
        if is_leaf[node]:
            continue
        for child in (int(left[node]), int(right[node])):
            if seen[child]:
                raise Malformed(f"{where} node {node}: child {child} is reached twice (a cycle or shared node)")
            if parents[child] != node:
                raise Malformed(f"{where} node {child}: parent {int(parents[child])}, but node {node} points at it")
            seen[child] = True
            stack.append(child)
    _check_categories(where, tree, n, split_type, is_leaf)


def _check_categories(where: str, tree: dict, n: int, split_type: np.ndarray, is_leaf: np.ndarray) -> None:
    nodes = _ints(tree.get("categories_nodes", []), f"{where}: categories_nodes")
    segments = _ints(tree.get("categories_segments", []), f"{where}: categories_segments", len(nodes))
    sizes = _ints(tree.get("categories_sizes", []), f"{where}: categories_sizes", len(nodes))
    categories = _ints(tree.get("categories", []), f"{where}: categories")
    if len(nodes) and ((nodes < 0) | (nodes >= n)).any():
        raise Malformed(f"{where}: categories_nodes outside 0..{n - 1}")
    categorical = set(np.flatnonzero((split_type == 1) & ~is_leaf).tolist())
    if set(nodes.tolist()) != categorical:
        raise Malformed(f"{where}: categorical split nodes {sorted(categorical)[:5]} != categories_nodes")
    if len(nodes) and ((segments < 0) | (sizes < 0) | (segments + sizes > len(categories))).any():
        raise Malformed(f"{where}: a categorical segment lies outside the {len(categories)} categories")
    if len(categories) and ((categories < 0) | (categories > MAX_CATEGORY)).any():
        raise Malformed(f"{where}: a category code outside 0..{MAX_CATEGORY}")


def check_model(doc: Any) -> None:
    """What XGBoost's predictor relies on (module docstring); ``Malformed`` naming the tree and node."""
    learner = _get(doc, "learner")
    params = _get(learner, "learner_model_param")
    n_features = _int(_get(params, "num_feature"), "num_feature", 1, MAX_FEATURES)
    n_class = _int(params.get("num_class", 0), "num_class", 0, MAX_CLASSES)
    n_target = _int(params.get("num_target", 1), "num_target", 1, MAX_CLASSES)
    n_groups = max(n_class, n_target, 1)
    booster = _get(learner, "gradient_booster")
    name = _get(booster, "name")
    if name == "gblinear":
        weights = _get(booster, "model", "weights")
        if len(weights) != (n_features + 1) * n_groups:
            raise Malformed(f"gblinear has {len(weights)} weights for {n_features} features x {n_groups} outputs")
        return
    if name not in ("gbtree", "dart"):
        raise Malformed(f"gradient booster {name!r} is not one XGBoost defines")
    model = _get(booster, "gbtree", "model") if name == "dart" else _get(booster, "model")
    trees = _get(model, "trees")
    n_trees = _int(_get(model, "gbtree_model_param", "num_trees"), "num_trees", 0, 1 << 31)
    if not isinstance(trees, list) or n_trees != len(trees):
        raise Malformed(f"num_trees = {n_trees} but the model holds {len(trees)} trees")
    info = _ints(_get(model, "tree_info"), "tree_info", n_trees)
    if len(info) and ((info < 0) | (info >= n_groups)).any():
        raise Malformed(f"tree_info names an output outside 0..{n_groups - 1}")
    if "iteration_indptr" in model:
        indptr = _ints(model["iteration_indptr"], "iteration_indptr")
        if len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != n_trees or (np.diff(indptr) < 0).any():
            raise Malformed("iteration_indptr is not a non-decreasing 0..num_trees")
    if name == "dart" and len(_get(booster, "weight_drop")) != n_trees:
        raise Malformed(f"dart weight_drop has {len(booster['weight_drop'])} weights for {n_trees} trees")
    saved_by = doc.get("version") if isinstance(doc, dict) else None
    version = ".".join(str(v) for v in saved_by) if isinstance(saved_by, list) else ""
    for k, tree in enumerate(trees):
        _check_tree(k, tree, n_features, n_groups, version)
