"""The one registry of model families.

Every family of the spec is one ``Family`` entry: canonical name, aliases, category,
input rank, native file formats (in order of preference) and the converter that turns it
into ONNX. Nothing else in the code switches on family-name strings: it asks the entry.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Category(enum.StrEnum):
    TREE = "tree"
    LINEAR = "linear"
    KERAS = "keras"
    SEQUENTIAL = "sequential"
    PROBABILISTIC = "probabilistic"
    META = "meta"


# Native formats, by file name. Pickle-based ones run code when opened (see integrity).
LIGHTGBM_TXT = "model.txt"
XGBOOST_JSON = "model.json"
XGBOOST_UBJ = "model.ubj"
CATBOOST_CBM = "model.cbm"
JOBLIB = "model.joblib"
PICKLE = "model.pkl"
KERAS = "model.keras"
KERAS_H5 = "model.h5"
PICKLE_FORMATS = frozenset({JOBLIB, PICKLE})


@dataclass(frozen=True)
class Family:
    name: str
    category: Category
    input_rank: int  # 2: (N, F); 3: (N, T, F)
    formats: tuple[str, ...]
    converter: str  # key in fastinfer.converters' registry
    aliases: tuple[str, ...] = ()
    handles_nan: bool = False  # the native model routes NaN itself (trees with missing-value branches)

    @property
    def sequential(self) -> bool:
        return self.input_rank == 3


_SKLEARN = (JOBLIB, PICKLE)
_KERAS = (KERAS, KERAS_H5)

FAMILIES: tuple[Family, ...] = (
    Family("lightgbm", Category.TREE, 2, (LIGHTGBM_TXT, *_SKLEARN), "lightgbm", ("lgbm", "lgb", "light_gbm"), True),
    Family("xgboost", Category.TREE, 2, (XGBOOST_JSON, XGBOOST_UBJ, *_SKLEARN), "xgboost", ("xgb",), True),
    Family("catboost", Category.TREE, 2, (CATBOOST_CBM, *_SKLEARN), "catboost", ("cat", "cb"), True),
    Family("random_forest", Category.TREE, 2, _SKLEARN, "sklearn", ("rf", "randomforestregressor")),
    Family("extra_trees", Category.TREE, 2, _SKLEARN, "sklearn", ("et", "extratreesregressor")),
    Family("ridge", Category.LINEAR, 2, _SKLEARN, "sklearn", ("ridge_regression",)),
    Family("lasso", Category.LINEAR, 2, _SKLEARN, "sklearn"),
    Family("elastic_net", Category.LINEAR, 2, _SKLEARN, "sklearn", ("elasticnet",)),
    Family("linear_regression", Category.LINEAR, 2, _SKLEARN, "sklearn", ("linear", "ols")),
    Family("mlp", Category.KERAS, 2, _KERAS, "keras", ("dense", "feedforward")),
    Family("cnn1d", Category.KERAS, 3, _KERAS, "keras", ("cnn", "conv1d")),
    Family("lstm", Category.KERAS, 3, _KERAS, "keras"),
    Family("transformer", Category.KERAS, 3, _KERAS, "keras"),
    Family("tab_lstm", Category.SEQUENTIAL, 3, _KERAS, "keras"),
    Family("tab_transformer", Category.SEQUENTIAL, 3, _KERAS, "keras"),
    Family("tab_cnn", Category.SEQUENTIAL, 3, _KERAS, "keras"),
    Family("cnn1d_transformer", Category.SEQUENTIAL, 3, _KERAS, "keras"),
    Family("ngboost", Category.PROBABILISTIC, 2, _SKLEARN, "ngboost", ("ngb",)),
    Family(
        "quantile_lightgbm",
        Category.PROBABILISTIC,
        2,
        _SKLEARN,
        "quantile_lightgbm",
        ("qlgbm", "lightgbm_quantile"),
        True,
    ),
    Family("ensemble", Category.META, 2, _SKLEARN, "ensemble", ("voting",)),
    Family("meta_learning", Category.META, 2, _SKLEARN, "ensemble", ("stacking", "meta_learner")),
)


def normalize(name: str) -> str:
    """``LightGBM``, ``light_gbm``, ``Light-GBM`` and ``lightgbm`` all normalise alike."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


_BY_KEY: dict[str, Family] = {}
for _family in FAMILIES:
    for _key in (_family.name, *_family.aliases):
        _norm = normalize(_key)
        if _norm in _BY_KEY and _BY_KEY[_norm] is not _family:
            raise RuntimeError(f"family alias {_key!r} registered twice")
        _BY_KEY[_norm] = _family


def resolve(name: str | Family) -> Family:
    """The family for any spelling of its name; ``ValueError`` listing the known ones otherwise."""
    if isinstance(name, Family):
        return name
    family = _BY_KEY.get(normalize(name))
    if family is None:
        known = ", ".join(f.name for f in FAMILIES)
        raise ValueError(f"Unknown family: {name!r} (known: {known})")
    return family


def find(name: str) -> Family | None:
    """Like ``resolve`` but ``None`` for an unknown name."""
    return _BY_KEY.get(normalize(name))


def of_category(*categories: Category) -> tuple[Family, ...]:
    return tuple(f for f in FAMILIES if f.category in categories)
