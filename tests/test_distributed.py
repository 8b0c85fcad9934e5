"""LivePredictor state round trip, and ShardedPredictor on a local 2-CPU Ray cluster.

The same replay of real GOOG bars (8 symbols: other offsets and price scales, one missing
bar) goes through the single-process predictor and the sharded one: predictions must be
identical, also after shard actors are killed mid-replay and recovered from their last
checkpoint plus the bars since.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastinfer.errors import InferenceError, StateError
from fastinfer.features import ohlcv_arrays
from fastinfer.predictor import LivePredictor

from ._hardening import hostile
from .conftest import MARKET_TRAIN_BARS, copy_run

ray = pytest.importorskip("ray", reason="ray is the [distributed] extra")

DAILY = 1440.0
N_SYMBOLS = 8
N_BARS = 90
SYMBOLS = [f"SYM{i}" for i in range(N_SYMBOLS)]


@pytest.fixture(scope="module")
def bars(goog):
    """[(open, high, low, close, volume, timestamp)] per bar; symbol i starts 37·i bars later at scale 1 + 0.2·i."""
    a = ohlcv_arrays(goog)
    start = MARKET_TRAIN_BARS
    out = []
    for t in range(N_BARS):
        rows = [
            np.array([a[k][start + 37 * i + t] * (1 + 0.2 * i) for i in range(N_SYMBOLS)])
            for k in ("open", "high", "low", "close", "volume")
        ]
        if t == 55:  # SYM3 misses a bar: its stale flag is state too
            for r in rows:
                r[3] = np.nan
        out.append((*rows, goog.index[start + t]))
    return out


@pytest.fixture(scope="module")
def reference(market_run, bars):
    """The single-process predictor's output after every bar."""
    predictor = LivePredictor(market_run, SYMBOLS, DAILY)
    return [predictor.on_bar(*b[:5], timestamp=b[5]).copy() for b in bars]


def _kill(actor, deadline_s: float = 60.0) -> None:
    """Kill a shard actor and wait until Ray reports it dead: ``ray.kill`` is asynchronous, and a
    kill that lands only after the next bar was served would move the recovery to a later bar."""
    import time

    ray.kill(actor, no_restart=True)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            ray.get(actor.describe.remote(), timeout=deadline_s)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.02)
    raise AssertionError(f"actor {actor} still answers {deadline_s} s after ray.kill")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_reference_replay_is_warmed_up(reference):
    # Otherwise equality below would compare mostly NaN.
    assert not np.isnan(reference[-1]).any()
    assert sum(int((~np.isnan(r)).sum()) for r in reference) > 25 * reference[-1].size


# ---------------------------------------------------------------- LivePredictor state


@pytest.mark.parametrize("at", [20, 56, 75], ids=["warming-up", "after-missing-bar", "warm"])
def test_state_round_trip_then_replay_is_bit_identical(market_run, bars, reference, at):
    first = LivePredictor(market_run, SYMBOLS, DAILY)
    for b in bars[:at]:
        first.on_bar(*b[:5], timestamp=b[5])
    state = json.loads(json.dumps(first.state_dict()))  # JSON-safe: it survives a file
    assert state["payload"]["bars"] == at
    second = LivePredictor(market_run, SYMBOLS, DAILY)
    second.load_state_dict(state)
    assert second.bars == at
    for t in range(at, N_BARS):
        out = second.on_bar(*bars[t][:5], timestamp=bars[t][5])
        assert np.array_equal(out, reference[t], equal_nan=True), t


def test_bad_state_is_refused_and_leaves_the_predictor_as_it_was(market_run, bars, reference):
    predictor = LivePredictor(market_run, SYMBOLS, DAILY)
    for b in bars[:60]:
        predictor.on_bar(*b[:5], timestamp=b[5])
    from fastinfer.state import wrap

    good = predictor.state_dict()
    other = LivePredictor(market_run, SYMBOLS[:2], DAILY).state_dict()
    corrupt = json.loads(json.dumps(good))
    buffers = next(iter(corrupt["payload"]["buffers"].values()))
    text = json.dumps(buffers)
    mid = len(text) // 2  # one character of the buffer state changed
    corrupt["payload"]["buffers"] = {
        k: json.loads(text[:mid] + ("B" if text[mid] != "B" else "C") + text[mid + 1 :]) if text[mid].isalnum() else v
        for k, v in corrupt["payload"]["buffers"].items()
    }
    if corrupt == good:  # the middle character was punctuation: change a count instead
        corrupt["payload"]["bars"] += 1
    wrong_kind = dict(good, kind="something else")
    for bad, match in (
        (other, "symbols"),
        (corrupt, "sha256"),
        (wrong_kind, "kind"),
        (wrap("predictor", 3, dict(good["payload"], bars=-1)), "bars"),
        ("nope", "state object"),
    ):
        with pytest.raises(StateError, match=match):
            predictor.load_state_dict(bad)
    for t in range(60, N_BARS):  # untouched by the refused loads
        assert np.array_equal(predictor.on_bar(*bars[t][:5], timestamp=bars[t][5]), reference[t], equal_nan=True)


# ---------------------------------------------------------------- sharded on Ray


def test_sharded_equals_single_process(cluster, market_run, bars, reference):
    from fastinfer.distributed import ShardedPredictor

    single = LivePredictor(market_run, SYMBOLS, DAILY)
    with ShardedPredictor(market_run, SYMBOLS, DAILY, shards=2, checkpoint_every=25) as sharded:
        assert sharded.columns == single.columns
        assert [sl.stop - sl.start for sl in sharded.slices] == [4, 4]
        for t, b in enumerate(bars):
            out = sharded.on_bar(*b[:5], timestamp=b[5])
            single.on_bar(*b[:5], timestamp=b[5])
            assert out.shape == reference[t].shape
            assert np.array_equal(out, reference[t], equal_nan=True), t
        assert all(sharded.as_dict(s) == single.as_dict(s) for s in SYMBOLS)
        assert sharded.restarts == [0, 0] and sharded.bars == N_BARS
        assert [s["count"] for s in sharded.latency()] == [N_BARS, N_BARS]
        with pytest.raises(InferenceError, match=r"close: expected shape \(8,\)"):
            sharded.on_bar(*(b[:3]), b[3][:5], b[4], timestamp=None)
        with pytest.raises(InferenceError, match="the run reads no external columns"):
            sharded.on_bar(*b[:5], timestamp=None, external={})
        assert sharded.bars == N_BARS  # a refused bar changes nothing


def test_killed_actors_recover_with_nothing_lost(cluster, market_run, bars, reference, tmp_path):
    from fastinfer.distributed import ShardedPredictor

    every = 16
    kills = {40: 1, 41: 1, 70: 0}  # shard 1 twice in a row (the second time mid-recovery window), then shard 0
    with ShardedPredictor(
        market_run, SYMBOLS, DAILY, shards=2, checkpoint_every=every, checkpoint_dir=tmp_path / "ckpt"
    ) as sharded:
        killed = []
        for t, b in enumerate(bars):
            if t in kills:
                actor = sharded.actors[kills[t]]
                _kill(actor)
                killed.append(actor)
            out = sharded.on_bar(*b[:5], timestamp=b[5])
            assert np.array_equal(out, reference[t], equal_nan=True), t  # every bar served, none lost
        assert sharded.restarts == [1, 2]
        assert all(a not in sharded.actors for a in killed)
        for i in range(2):  # the on-disk checkpoints are the newest, written atomically
            state = json.loads((tmp_path / "ckpt" / f"shard-{i}.json").read_text())
            assert state["kind"] == "predictor" and state["payload"]["bars"] == (N_BARS // every) * every
            assert state["payload"]["symbols"] == SYMBOLS[4 * i : 4 * i + 4]


def test_bad_bar_time_is_refused_before_any_shard_and_replay_stays_identical(cluster, market_run, bars, reference):
    """A bar older than the previous one (or not a time) is refused by the runner and by the single
    predictor alike; it is not kept for replay, so a later recovery replays only good bars."""
    from fastinfer.distributed import ShardedPredictor

    single = LivePredictor(market_run, SYMBOLS, DAILY)
    every = 16  # checkpoints after bars 16, 32, 48, 64, 80: the refused bar at 66 is in the replay window of 70
    refused = {
        30: bars[28][5],
        47: "2016-01-01",
        66: bars[65][5] - np.timedelta64(1, "s"),
        67: np.datetime64("3000-01-01"),
    }
    with ShardedPredictor(market_run, SYMBOLS, DAILY, shards=2, checkpoint_every=every) as sharded:
        for t, b in enumerate(bars):
            if t in refused:
                since, last = list(sharded._since), sharded.out.copy()
                for predictor in (single, sharded):
                    with pytest.raises(InferenceError, match="timestamp") as raised:
                        predictor.on_bar(*b[:5], timestamp=refused[t])
                    assert type(raised.value) is InferenceError  # fastinfer's own error, not Ray's wrapper
                assert sharded.bars == single.bars == t and sharded._since == since
                assert np.array_equal(sharded.out, last, equal_nan=True)
            if t == 70:
                _kill(sharded.actors[1])  # recovery replays bars 64..69 (no refused one), then 70
            out = sharded.on_bar(*b[:5], timestamp=b[5])
            expected = single.on_bar(*b[:5], timestamp=b[5])
            assert np.array_equal(out, expected, equal_nan=True) and np.array_equal(
                out, reference[t], equal_nan=True
            ), t
        assert sharded.restarts == [0, 1]


def _break_shard_clock(actor) -> None:
    """Make one shard alone refuse the next bar: its predictor believes it saw a bar in 2116."""
    ray.get(actor.__ray_call__.remote(lambda shard: setattr(shard.predictor._clock, "last", 2**62)))


def test_error_inside_one_shard_rewinds_every_shard_and_raises_the_typed_error(cluster, market_run, bars, reference):
    """Shard 1 raises while shard 0 has already taken the bar: both are rewound (to the state at
    construction before the first checkpoint, to the last checkpoint after) and the caller gets
    fastinfer's ``InferenceError``; sending the bar again then gives the reference output."""
    from fastinfer.distributed import ShardedPredictor

    with ShardedPredictor(market_run, SYMBOLS, DAILY, shards=2, checkpoint_every=20) as sharded:
        for t, b in enumerate(bars):
            if t in (12, 50, 51):  # 12: before any checkpoint; 50, 51: 10 and 11 bars after the one at 40
                _break_shard_clock(sharded.actors[1])
                since, last = list(sharded._since), sharded.out.copy()
                with pytest.raises(InferenceError, match="older than the previous bar") as raised:
                    sharded.on_bar(*b[:5], timestamp=b[5])
                assert type(raised.value) is InferenceError
                assert isinstance(raised.value.__cause__, ray.exceptions.RayTaskError)  # the actor's traceback
                assert sharded.bars == t and sharded._since == since
                assert np.array_equal(sharded.out, last, equal_nan=True)
            out = sharded.on_bar(*b[:5], timestamp=b[5])
            assert np.array_equal(out, reference[t], equal_nan=True), t  # shard 0 did not keep the refused bar
        assert sharded.restarts == [0, 0]  # rewound in place, no actor replaced


def test_shard_that_does_not_answer_in_time_is_a_shard_failed_error_and_nothing_changes(
    cluster, market_run, bars, reference
):
    from fastinfer.distributed import ShardedPredictor, ShardFailedError

    def hang(shard):
        import threading

        shard.predictor.on_bar = lambda *a, **k: threading.Event().wait()  # never returns

    with ShardedPredictor(market_run, SYMBOLS, DAILY, shards=2, checkpoint_every=25, timeout_s=20) as sharded:
        for t, b in enumerate(bars[:40]):
            if t == 30:
                ray.get(sharded.actors[0].__ray_call__.remote(hang))
                with pytest.raises(ShardFailedError, match=r"shard 0 .*no answer to bar 30 within timeout_s=20"):
                    sharded.on_bar(*b[:5], timestamp=b[5])
                assert sharded.bars == 30 and sharded.restarts == [1, 0]  # replaced: checkpoint 25 + bars 25..29
            out = sharded.on_bar(*b[:5], timestamp=b[5])
            assert np.array_equal(out, reference[t], equal_nan=True), t


def test_failing_construction_stops_every_actor_it_started(cluster, market_run, monkeypatch):
    from fastinfer.distributed import ShardedPredictor
    from fastinfer.errors import ModelLoadError

    started = []
    start = ShardedPredictor._start

    def recording(self, i):
        started.append(start(self, i))
        return started[-1]

    monkeypatch.setattr(ShardedPredictor, "_start", recording)
    with pytest.raises(ModelLoadError, match="no usable model") as raised:  # the actors' own error, unwrapped
        ShardedPredictor(market_run, SYMBOLS, DAILY, shards=2, families=["nope"])
    assert type(raised.value) is ModelLoadError
    with pytest.raises(ModelLoadError, match="interval mismatch"):
        ShardedPredictor(market_run, SYMBOLS, 60.0, shards=2)
    assert len(started) == 4
    for actor in started:  # killed: a call on them reports a dead actor, not the build error
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.describe.remote(), timeout=60)


def test_bad_arguments(cluster, market_run):
    from fastinfer.distributed import ShardedPredictor

    with pytest.raises(InferenceError, match="more than the 2 symbols"):
        ShardedPredictor(market_run, SYMBOLS[:2], DAILY, shards=3)
    with pytest.raises(InferenceError, match="checkpoint_every"):
        ShardedPredictor(market_run, SYMBOLS, DAILY, checkpoint_every=0)
    with pytest.raises(InferenceError, match="listed twice"):
        ShardedPredictor(market_run, ["A", "A"], DAILY)
    for timeout in (0, -1.0, True, "5"):
        with pytest.raises(InferenceError, match="timeout_s"):
            ShardedPredictor(market_run, SYMBOLS, DAILY, timeout_s=timeout)


def test_definitions_and_bars_per_day_reach_every_shard(cluster, market_run, bars, reference):
    """The sharded predictor takes LivePredictor's feature options and gives each shard the same."""
    from fastinfer.distributed import ShardedPredictor
    from fastinfer.errors import ModelLoadError

    defs = {"features": {"ret_1": "log_return(close, 1)"}}  # shadows the vocabulary's simple return
    single = LivePredictor(market_run, SYMBOLS, DAILY, definitions=defs)
    with ShardedPredictor(market_run, SYMBOLS, DAILY, shards=2, definitions=defs) as sharded:
        for b in bars:
            out = sharded.on_bar(*b[:5], timestamp=b[5])
            assert np.array_equal(out, single.on_bar(*b[:5], timestamp=b[5]), equal_nan=True)
    assert np.isfinite(out).all() and not np.array_equal(out, reference[-1])  # the definition did change them
    with pytest.raises(ModelLoadError, match="bars_per_day is 6 here but the definitions fix it at 7"):
        ShardedPredictor(market_run, SYMBOLS, DAILY, shards=2, definitions={"bars_per_day": 7}, bars_per_day=6)


def test_external_columns_are_refused_before_any_shard_as_live_refuses_them(cluster, market_run, bars, reference):
    """Declared external columns (read by no feature here, so outputs are as without them): text or
    ragged columns are an InferenceError naming the column, raised before a shard sees the bar."""
    from fastinfer.distributed import ShardedPredictor

    good = {"x": np.ones(N_SYMBOLS), "y": np.arange(N_SYMBOLS)}
    cases = {
        "text in a column": ({"x": "abc", "y": good["y"]}, "external 'x': expected float or int values"),
        "ragged columns": ({"x": good["x"], "y": np.ones(5)}, r"external 'y': expected shape \(8,\)"),
        "ragged matrix": ([[1.0, 2.0]] * 7 + [[1.0]], "external: not an array of numbers"),
        "matrix of the wrong width": (np.ones((N_SYMBOLS, 3)), r"external: expected shape \(8, 2\)"),
        "a column too many": ({**good, "z": good["x"]}, r"expected exactly \['x', 'y'\]"),
    }
    with ShardedPredictor(market_run, SYMBOLS, DAILY, shards=2, definitions={"external": ["x", "y"]}) as sharded:
        assert sharded.externals == ("x", "y")
        for case, (external, match) in cases.items():
            hostile("live bar", f"sharded predictor: external {case}")
            with pytest.raises(InferenceError, match=match):
                sharded.on_bar(*bars[0][:5], timestamp=bars[0][5], external=external)
        assert sharded.bars == 0  # refused bars change nothing
        for t, b in enumerate(bars[:3]):
            external = good if t % 2 else np.column_stack([good["x"], good["y"]])
            assert np.array_equal(
                sharded.on_bar(*b[:5], timestamp=b[5], external=external), reference[t], equal_nan=True
            )


def test_left_out_models_refused_bars_and_run_time_failures_are_reported_as_live_reports_them(
    cluster, market_run, bars, tmp_path
):
    """One model's meta is unreadable (left out of every shard, named with why, as LivePredictor
    says); one symbol's bar is impossible (counted for that symbol); one model fails inside shard 1
    on two bars (NaN for that model and shard 1's symbols on those bars only, recorded)."""
    from fastinfer.distributed import ShardedPredictor
    from fastinfer.runtime import AGREEMENT_RTOL

    run = copy_run(market_run, tmp_path)
    next(run.glob("targets/*/models/*/family=ridge/model_meta.json")).write_text("{")
    single = LivePredictor(run, SYMBOLS, DAILY)
    victim = next(m for m in single.models if m.family.name == "lightgbm")
    key = (victim.target, "lightgbm")
    mine = [j for j, (t, f, _) in enumerate(single.columns) if (t, f) == key]
    others = [j for j in range(len(single.columns)) if j not in mine]

    def break_model(broken: bool):
        def apply(shard):
            def explode(*args, **kwargs):
                raise RuntimeError("bad allocation")

            p = shard.predictor
            model = next(m for m in p.models if (m.target, m.family.name) == key)
            for _, bound, _ in p.plan._groups:  # every fused group fails, then each model runs alone
                if broken:
                    bound.run = explode
                else:
                    vars(bound).pop("run", None)
            if broken:
                model._run = explode
            else:
                vars(model).pop("_run", None)

        return apply

    with ShardedPredictor(run, SYMBOLS, DAILY, shards=2, checkpoint_every=1000) as sharded:
        assert sharded.unavailable == single.unavailable
        assert [f for _, f in sharded.unavailable] == ["ridge"]
        for t, b in enumerate(bars):
            bar = [a.copy() for a in b[:5]]
            if t == 30:
                bar[1][5] = bar[2][5] * 0.5  # SYM5: high below low
            if t in (60, 62):
                ray.get(sharded.actors[1].__ray_call__.remote(break_model(t == 60)))
            out = sharded.on_bar(*bar, timestamp=b[5])
            want = single.on_bar(*bar, timestamp=b[5])
            if t not in (60, 61):
                assert np.array_equal(out, want, equal_nan=True), t
                continue
            assert np.array_equal(out[:4], want[:4], equal_nan=True)  # shard 0 never failed
            assert np.isnan(out[4:, mine]).all() and np.isfinite(want[4:, mine]).any()  # it had values to lose
            scale = np.nanmax(np.abs(want[4:, others]), axis=0)  # each model alone on its own backend
            close = np.abs(out[4:, others] - want[4:, others]) <= AGREEMENT_RTOL * scale
            assert (close | (np.isnan(out[4:, others]) & np.isnan(want[4:, others]))).all()
        assert list(sharded.rejected_bars) == list(single.rejected_bars) == [0, 0, 0, 0, 0, 1, 0, 0]
        failures = sharded.run_failures
        assert set(failures) == {key} and (failures[key].count, failures[key].last_bar) == (2, 61)
        assert "bad allocation" in failures[key].last_error
