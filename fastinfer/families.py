"""The one registry of model families.

Every family of the spec is one ``Family`` entry: canonical name, aliases, category, input
rank, and the adapter of its model library (``fastinfer.adapters``), which holds everything
about the library: file formats and loaders, predict, feature names, output columns, the
converter, the parity tolerance and the test writer's trainer. Nothing else in the code
switches on family-name strings: it asks the entry, or its adapter.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .adapters import (
    CATBOOST,
    ENSEMBLE,
    KERAS_ADAPTER,
    LIGHTGBM,
    NGBOOST,
    QUANTILE_SET,
    SKLEARN,
    XGBOOST,
    Adapter,
    FileFormat,
)


class Category(enum.StrEnum):
    TREE = "tree"
    LINEAR = "linear"
    KERAS = "keras"
    SEQUENTIAL = "sequential"
    PROBABILISTIC = "probabilistic"
    META = "meta"


@dataclass(frozen=True)
class Family:
    name: str
    category: Category
    input_rank: int  # 2: (N, F); 3: (N, T, F)
    adapter: Adapter
    aliases: tuple[str, ...] = ()
    handles_nan: bool = False  # the native model routes NaN itself (trees with missing-value branches)

    @property
    def sequential(self) -> bool:
        return self.input_rank == 3

    @property
    def formats(self) -> tuple[str, ...]:
        """The file names a model of this family may be saved as, in order of preference."""
        return tuple(f.name for f in self.adapter.formats)

    def file_format(self, file_name: str) -> FileFormat | None:
        return self.adapter.format(file_name)

    @property
    def converter(self) -> str:
        return self.adapter.converter


FAMILIES: tuple[Family, ...] = (
    Family("lightgbm", Category.TREE, 2, LIGHTGBM, ("lgbm", "lgb", "light_gbm"), True),
    Family("xgboost", Category.TREE, 2, XGBOOST, ("xgb",), True),
    Family("catboost", Category.TREE, 2, CATBOOST, ("cat", "cb"), True),
    Family("random_forest", Category.TREE, 2, SKLEARN, ("rf", "randomforestregressor")),
    Family("extra_trees", Category.TREE, 2, SKLEARN, ("et", "extratreesregressor")),
    Family("ridge", Category.LINEAR, 2, SKLEARN, ("ridge_regression",)),
    Family("lasso", Category.LINEAR, 2, SKLEARN),
    Family("elastic_net", Category.LINEAR, 2, SKLEARN, ("elasticnet",)),
    Family("linear_regression", Category.LINEAR, 2, SKLEARN, ("linear", "ols")),
    Family("mlp", Category.KERAS, 2, KERAS_ADAPTER, ("dense", "feedforward")),
    Family("cnn1d", Category.KERAS, 3, KERAS_ADAPTER, ("cnn", "conv1d")),
    Family("lstm", Category.KERAS, 3, KERAS_ADAPTER),
    Family("transformer", Category.KERAS, 3, KERAS_ADAPTER),
    Family("tab_lstm", Category.SEQUENTIAL, 3, KERAS_ADAPTER),
    Family("tab_transformer", Category.SEQUENTIAL, 3, KERAS_ADAPTER),
    Family("tab_cnn", Category.SEQUENTIAL, 3, KERAS_ADAPTER),
    Family("cnn1d_transformer", Category.SEQUENTIAL, 3, KERAS_ADAPTER),
    Family("ngboost", Category.PROBABILISTIC, 2, NGBOOST, ("ngb",)),
    Family("quantile_lightgbm", Category.PROBABILISTIC, 2, QUANTILE_SET, ("qlgbm", "lightgbm_quantile"), True),
    Family("ensemble", Category.META, 2, ENSEMBLE, ("voting",)),
    Family("meta_learning", Category.META, 2, ENSEMBLE, ("stacking", "meta_learner")),
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
