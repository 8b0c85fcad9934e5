"""``fastinfer.feature_builder``: the spec's ``FeatureBuilder`` and the OHLCV frame checks.

They live in ``fastinfer.features`` (``builder`` and ``frames``); this module keeps the old
import path working.
"""

from __future__ import annotations

from .features.builder import FeatureBuilder
from .features.frames import TIME_COLUMNS, check_time_order, ohlcv_arrays

__all__ = ["TIME_COLUMNS", "FeatureBuilder", "check_time_order", "ohlcv_arrays"]
