"""LightGBM ``model.txt``: what its C++ parser trusts, checked before it sees unverified bytes.

LightGBM's parser (``GBDT::LoadModelFromString``, ``Tree::Tree(const char*)``) trusts the file: a
truncated tree block reads past the text, arrays shorter than ``num_leaves`` are read past their end,
a ``tree_sizes`` header that disagrees with the trees sends the parser into the middle of one, and a
split feature, child index or categorical set index out of range is followed at predict time. Each
of those crashes the process (SIGSEGV) instead of raising. ``read_model_text`` walks the text the
way the parser does and checks every such value; it accepts what the parser reads safely:

* a file without the trailing ``end of trees`` marker (the parser stops at the first line after the
  trees that is not ``Tree=...``), provided each tree block ends with a blank line;
* a stale ``tree_sizes`` line: LightGBM would jump to the wrong offsets, so the line is dropped and
  the *repaired* text (which the parser then reads tree by tree) is what LightGBM gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import MalformedFile

_NEWLINE = re.compile(r"\r\n|\r|\n")  # LightGBM's GetLine / SkipNewLine: "\r\n", "\r" or "\n" ends a line
_MAX_TREE_LINES = 22  # Tree::Tree reads at most this many key=value lines
_MAX_LEAVES = 1 << 20
_MAX_FEATURES = 1 << 24
_MAX_CLASSES = 1 << 16
_SPLIT_ARRAYS = (
    "split_feature",
    "split_gain",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "internal_value",
    "internal_weight",
    "internal_count",
)
_LEAF_ARRAYS = ("leaf_value", "leaf_weight", "leaf_count", "leaf_const", "num_features")
_INTEGER_ARRAYS = ("split_feature", "decision_type", "left_child", "right_child", "internal_count", "leaf_count")
# decision_type bits (tree.h): 1 categorical, 2 default left, bits 2-3 missing type 0 None, 1 Zero, 2 NaN.
_MAX_DECISION_TYPE = 0b1011
# The first line of a model text written by LightGBM before v2 (2017): the boosting type, not "tree".
_PRE_V2_HEADERS = ("gbdt", "dart", "goss")


class Malformed(MalformedFile):
    """Why the text is not one LightGBM's parser reads safely."""


@dataclass(frozen=True)
class ModelText:
    """A checked model.txt: ``text`` is what LightGBM is given (repaired where ``repaired`` says how)."""

    text: str
    n_features: int
    n_trees: int
    repaired: str = ""


def _lines(text: str) -> list[tuple[int, str]]:
    """(offset, line) for every line, as LightGBM splits them."""
    out, start = [], 0
    for m in _NEWLINE.finditer(text):
        out.append((start, text[start : m.start()]))
        start = m.end()
    if start < len(text):
        out.append((start, text[start:]))
    return out


def _numbers(values: str, what: str, integer: bool) -> list[float]:
    try:
        nums = [float(v) for v in values.split()]
    except ValueError:
        raise Malformed(f"{what} holds a value that is not a number") from None
    if integer and any(v != v or v in (float("inf"), float("-inf")) or v != int(v) for v in nums):
        raise Malformed(f"{what} holds a value that is not an integer")
    return nums


def _check_tree(k: int, fields: dict[str, str], n_features: int) -> None:
    where = f"tree {k}"
    try:
        leaves = int(fields["num_leaves"])
        n_cat = int(fields["num_cat"])
        linear = int(fields.get("is_linear", "0")) != 0
        float(fields.get("shrinkage", "1"))
    except KeyError as exc:
        raise Malformed(f"{where}: no {exc.args[0]} field") from None
    except ValueError:
        raise Malformed(f"{where}: num_leaves / num_cat / is_linear / shrinkage is not a number") from None
    if not 1 <= leaves <= _MAX_LEAVES or not 0 <= n_cat < max(leaves, 1):
        raise Malformed(f"{where}: num_leaves={leaves}, num_cat={n_cat} out of range")
    if "leaf_value" not in fields:
        raise Malformed(f"{where}: no leaf_value field")
    splits = leaves - 1
    arrays: dict[str, list[float]] = {}
    for name in (*_SPLIT_ARRAYS, *_LEAF_ARRAYS):
        if name in fields:
            want = splits if name in _SPLIT_ARRAYS else leaves
            values = _numbers(fields[name], f"{where}: {name}", name in _INTEGER_ARRAYS or name == "num_features")
            if len(values) != want:
                raise Malformed(f"{where}: {name} has {len(values)} values, num_leaves={leaves} needs {want}")
            arrays[name] = values
    if splits > 0:
        missing = [n for n in ("split_feature", "threshold", "left_child", "right_child") if n not in arrays]
        if missing:
            raise Malformed(f"{where}: no {missing[0]} field")
        _check_structure(where, arrays, leaves, n_features, n_cat)
    if n_cat:
        _check_categories(where, fields, arrays, n_cat, splits)
    if linear:
        _check_linear(where, fields, arrays, leaves, n_features)


def _check_structure(where: str, arrays: dict[str, list[float]], leaves: int, n_features: int, n_cat: int) -> None:
    """Children in range and a tree (every node reached once from the root); features in range."""
    left, right = arrays["left_child"], arrays["right_child"]
    splits = leaves - 1
    for name, children in (("left_child", left), ("right_child", right)):
        bad = next((c for c in children if not -leaves <= c < splits), None)
        if bad is not None:
            raise Malformed(f"{where}: {name} {int(bad)} out of range (-{leaves}..{splits - 1})")
    seen_nodes, seen_leaves, stack = {0}, set(), [0]
    while stack:
        node = stack.pop()
        for child in (int(left[node]), int(right[node])):
            if child < 0:
                if ~child in seen_leaves:
                    raise Malformed(f"{where}: leaf {~child} is reached twice")
                seen_leaves.add(~child)
            elif child in seen_nodes:
                raise Malformed(f"{where}: node {child} is reached twice (a cycle or shared node)")
            else:
                seen_nodes.add(child)
                stack.append(child)
    if len(seen_nodes) != splits or len(seen_leaves) != leaves:
        raise Malformed(
            f"{where}: {splits - len(seen_nodes)} split(s) and {leaves - len(seen_leaves)} leaves unreachable"
        )
    bad = next((f for f in arrays["split_feature"] if not 0 <= f < n_features), None)
    if bad is not None:
        raise Malformed(f"{where}: split_feature {int(bad)} out of range (the model has {n_features} features)")
    for node, d in enumerate(arrays.get("decision_type", [0.0] * splits)):
        if not 0 <= d <= _MAX_DECISION_TYPE:
            raise Malformed(f"{where}: node {node} decision_type {int(d)} is not one LightGBM defines")
        if int(d) & 1:
            t = arrays["threshold"][node]
            if t != int(t) or not 0 <= t < n_cat:
                raise Malformed(f"{where}: node {node} points at category set {t:g}; the tree has {n_cat}")


def _check_categories(
    where: str, fields: dict[str, str], arrays: dict[str, list[float]], n_cat: int, splits: int
) -> None:
    if "cat_boundaries" not in fields or "cat_threshold" not in fields:
        raise Malformed(f"{where}: num_cat={n_cat} but no cat_boundaries / cat_threshold")
    bounds = _numbers(fields["cat_boundaries"], f"{where}: cat_boundaries", True)
    words = _numbers(fields["cat_threshold"], f"{where}: cat_threshold", True)
    if len(bounds) != n_cat + 1 or bounds[0] != 0 or any(b > a for a, b in zip(bounds[1:], bounds)):
        raise Malformed(f"{where}: cat_boundaries must be {n_cat + 1} non-decreasing offsets from 0")
    if bounds[-1] != len(words) or any(not 0 <= w < 1 << 32 for w in words):
        raise Malformed(f"{where}: cat_threshold has {len(words)} 32-bit words, cat_boundaries end at {bounds[-1]:g}")


def _check_linear(
    where: str, fields: dict[str, str], arrays: dict[str, list[float]], leaves: int, n_features: int
) -> None:
    counts = arrays.get("num_features")
    if counts is None:
        return
    if any(c < 0 for c in counts):
        raise Malformed(f"{where}: negative num_features")
    total = int(sum(counts))
    for name in ("leaf_features", "leaf_coeff"):
        if name in fields:
            values = _numbers(fields[name], f"{where}: {name}", name == "leaf_features")
            if len(values) != total:
                raise Malformed(f"{where}: {name} has {len(values)} values, num_features sum to {total}")
            if name == "leaf_features" and any(not 0 <= f < n_features for f in values):
                raise Malformed(f"{where}: leaf_features out of range (the model has {n_features} features)")


def read_model_text(text: str) -> ModelText:
    """Check a LightGBM model.txt as its parser reads it; ``Malformed`` says why it would not be safe."""
    if "\x00" in text:
        raise Malformed("a NUL byte: the parser would stop reading there")
    lines = _lines(text)
    first_tree = next((i for i, (_, line) in enumerate(lines) if line.startswith("Tree=")), None)
    if lines and lines[0][1] in _PRE_V2_HEADERS and first_tree is not None:
        raise Malformed(
            f"a LightGBM model of the format before v2 (first line {lines[0][1]!r}, no feature_names line): "
            "LightGBM 2 and later cannot read it; retrain it, or re-save it with the LightGBM version that wrote it"
        )
    if not lines or lines[0][1] != "tree" or first_tree is None:
        raise Malformed("no LightGBM header or no trees")
    header = dict(line.partition("=")[::2] for _, line in lines[1:first_tree] if "=" in line)
    try:
        n_features = int(header["max_feature_idx"]) + 1
        n_class = int(header["num_class"])
        per_iteration = int(header.get("num_tree_per_iteration", n_class))
        int(header["label_index"])
        sizes = [int(x) for x in header["tree_sizes"].split()] if "tree_sizes" in header else None
    except KeyError as exc:
        raise Malformed(f"header lacks {exc.args[0]}") from None
    except ValueError:
        raise Malformed("header holds a non-integer max_feature_idx / num_class / tree_sizes") from None
    if not 1 <= n_features <= _MAX_FEATURES or len(header.get("feature_names", "").split()) != n_features:
        raise Malformed(f"max_feature_idx={n_features - 1} does not match the feature_names line")
    if not 1 <= per_iteration <= n_class <= _MAX_CLASSES:
        raise Malformed(f"num_class={n_class}, num_tree_per_iteration={per_iteration} out of range")
    # The trees, read as the parser reads them without tree_sizes: a "Tree=" line, then key=value
    # lines up to a blank line; the first other line ends the trees.
    starts: list[int] = []
    i = first_tree
    while i < len(lines):
        offset, line = lines[i]
        if not line:
            i += 1
            continue
        if not line.startswith("Tree="):
            break
        k = len(starts)
        starts.append(offset)
        block, i, n_lines = {}, i + 1, 0
        while i < len(lines) and lines[i][1]:
            n_lines += 1
            key, eq, value = lines[i][1].partition("=")
            if not eq:
                raise Malformed(f"tree {k}: line {lines[i][1][:40]!r} is not key=value")
            block[key] = value
            i += 1
        if i >= len(lines):
            raise Malformed(f"truncated: tree {k} is not followed by a blank line")
        if n_lines > _MAX_TREE_LINES:  # the parser would stop inside the block and drop the trees after it
            raise Malformed(f"tree {k} has more than {_MAX_TREE_LINES} lines")
        _check_tree(k, block, n_features)
    # After the trees the parser reads line by line ("\r\n", "\r" or "\n" ends a line): from a line
    # that is exactly "parameters:" up to one that is exactly "end of parameters". A block without
    # that line (cut short, or "end of parameters" followed by anything) makes it read past the text.
    rest = [line for _, line in lines[i:]]
    if "parameters:" in rest and "end of parameters" not in rest[rest.index("parameters:") :]:
        raise Malformed("truncated: 'parameters:' without an 'end of parameters' line")
    repaired = ""
    if "parameters:" in rest:
        first = i + rest.index("parameters:") + 1
        last = first + rest[first - i :].index("end of parameters")
        unreadable = [offset for offset, line in lines[first:last] if _unreadable_parameter(line)]
        if unreadable:
            text = _drop_lines(text, unreadable)
            repaired = f"dropped {len(unreadable)} parameter line(s) LightGBM's Python package cannot read back"
    if sizes is not None:
        boundaries = [starts[0] + sum(sizes[:j]) for j in range(len(sizes))]
        if boundaries != starts:
            text = _drop_line(text, "tree_sizes=")
            stale = f"dropped a stale tree_sizes line ({len(sizes)} sizes for {len(starts)} trees at other offsets)"
            repaired = f"{stale}; {repaired}" if repaired else stale
    return ModelText(text, n_features, len(starts), repaired)


def _drop_line(text: str, prefix: str) -> str:
    """``text`` without its header line starting with ``prefix`` (the first such line)."""
    for offset, line in _lines(text):
        if line.startswith(prefix):
            end = offset + len(line)
            m = _NEWLINE.match(text, end)
            return text[:offset] + text[m.end() if m else end :]
        if line.startswith("Tree="):
            break
    return text


def _unreadable_parameter(line: str) -> bool:
    """A ``[key: value]`` line the Python package's ``Booster`` turns into invalid JSON when it reads the
    model back (lightgbm-org/LightGBM#6349, #7432): a backslash (a Windows path), a quote, or a colon in
    the value (``name:column``). Prediction never reads these (data paths, column selections); the one
    parameter the parser does read, ``[linear_tree: ...]``, is plain."""
    value = line.partition(":")[2]
    return "\\" in line or '"' in line or ":" in value


def _drop_lines(text: str, offsets: list[int]) -> str:
    """``text`` without the lines starting at ``offsets`` (each with its line end)."""
    out, start = [], 0
    for offset in sorted(offsets):
        out.append(text[start:offset])
        end = _NEWLINE.search(text, offset)
        start = end.end() if end else len(text)
    return "".join(out) + text[start:]
