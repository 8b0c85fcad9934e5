"""Issue 10: 2,000 symbols per bar, sharded over a local 2-worker Ray cluster vs one process.

Subject: ``ShardedPredictor`` (2 Ray actors, 1,000 symbols each). Baseline: the single-process
``LivePredictor`` over all 2,000 symbols. Models: 3 horizons × LightGBM, XGBoost, Ridge, MLP
and an LSTM (sequence length 10), trained on GOOG daily bars and converted.

On a 2-core machine the driver, both actors and Ray's own processes share the same two
cores, so this measures the overhead of fanning a bar out and gathering it (serialisation,
scheduling, two round trips), not a speed-up: a ratio below 1 means the sharded path is
slower. Sharding pays off when each shard gets its own cores or machine.

The sharded predictor runs with its default ``checkpoint_every=100``: the 100 measured bars
(after 83 warm-up bars) hold exactly one checkpoint bar (every shard's ``state_dict`` sent
back to the runner), so the mean is the per-bar cost with checkpointing amortised, the
median a bar without one, and the max the checkpoint bar.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastinfer import testing
from fastinfer.compiler import compile_run
from fastinfer.features import ohlcv_arrays
from fastinfer.predictor import LivePredictor

ray = pytest.importorskip("ray", reason="ray is the [distributed] extra")

FAMILIES = ["lightgbm", "xgboost", "ridge", "mlp", "lstm"]
SIZE = testing.TrainSize(trees=200, depth=6, leaves=31, epochs=1, hidden=32)
N_SYMBOLS = 2000
WARM_BARS = 80
ROUNDS = 100  # with 3 warm-up rounds: bars 84..183, one of them the 100th (a checkpoint)
GROUP = "2000-symbols-bar"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from backtesting.test import GOOG

    root = testing.write_market_run(
        tmp_path_factory.mktemp("bench_dist"), GOOG.iloc[:1500], FAMILIES, sequence_length=10, size=SIZE
    )
    compile_run(root)
    a = ohlcv_arrays(GOOG)
    scale = 1.0 + 0.001 * np.arange(N_SYMBOLS)
    bars = [[a[k][t] * scale for k in ("open", "high", "low", "close", "volume")] for t in range(WARM_BARS + 1)]
    symbols = [f"S{i:04d}" for i in range(N_SYMBOLS)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield root, symbols, bars
    ray.shutdown()


def _report(benchmark, label: str) -> None:
    s = benchmark.stats.stats
    benchmark.extra_info.update(
        {
            "symbols_per_bar": N_SYMBOLS,
            "symbol_bars_per_s": round(N_SYMBOLS / s.median),
            "median_ms": round(s.median * 1e3, 3),
            "mean_ms": round(s.mean * 1e3, 3),
            "max_ms": round(s.max * 1e3, 3),
        }
    )
    print(
        f"\n{label}: per-bar latency median {s.median * 1e3:.2f} ms, mean {s.mean * 1e3:.2f} ms, "
        f"max {s.max * 1e3:.2f} ms; throughput {N_SYMBOLS / s.median:,.0f} symbol-bars/s (median), "
        f"{N_SYMBOLS / s.mean:,.0f} (mean)"
    )


def test_sharded_ray_2_workers(benchmark, record_ratio, setup):
    from fastinfer.distributed import ShardedPredictor

    root, symbols, bars = setup
    with ShardedPredictor(root, symbols, 1440.0, shards=2) as sharded:  # default checkpoint_every=100
        assert sharded.checkpoint_every == 100
        for bar in bars[:WARM_BARS]:
            sharded.on_bar(*bar)
        benchmark.pedantic(sharded.on_bar, args=tuple(bars[WARM_BARS]), rounds=ROUNDS, iterations=1, warmup_rounds=3)
        assert not np.isnan(sharded.predictions).any()
        assert sharded.bars == WARM_BARS + 3 + ROUNDS and sharded._checkpoints[0] is not None  # one was taken
        inside = sharded.latency()
    _report(benchmark, "sharded (Ray, 2 actors)")
    print("  on_bar inside each actor (median): " + ", ".join(f"{s['p50_us'] / 1e3:.2f} ms" for s in inside))
    record_ratio(GROUP, subject=True, name="ShardedPredictor (Ray, 2 actors)")


def test_single_process(benchmark, record_ratio, setup):
    root, symbols, bars = setup
    predictor = LivePredictor(root, symbols, 1440.0)
    for bar in bars[:WARM_BARS]:
        predictor.on_bar(*bar)
    benchmark.pedantic(predictor.on_bar, args=tuple(bars[WARM_BARS]), rounds=ROUNDS, iterations=1, warmup_rounds=3)
    assert not np.isnan(predictor.predictions).any()
    _report(benchmark, "single process")
    record_ratio(GROUP, name="LivePredictor (one process)")
