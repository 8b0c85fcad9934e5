"""Hand verified graphs to serving engines that already do serving well.

``export_triton`` writes a Triton Inference Server model repository from a run's lock;
``TritonPredictor`` asks such a server for predictions in the live predictor's
``{horizon: {family: value}}`` shape. ``tritonclient`` is the ``[serving]`` extra and is
imported only when one of these is used.
"""

from .triton import INDEX_FILE, SUMS_FILE, TritonPredictor, export_triton, load_index, parse_config, read_config

__all__ = ["INDEX_FILE", "SUMS_FILE", "TritonPredictor", "export_triton", "load_index", "parse_config", "read_config"]
