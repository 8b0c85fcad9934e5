"""Hostile input where it enters (#16.9, #16.11, #16.12): every case a typed error naming the
field, raised at the entry point, with no unbounded value in its message."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from fastinfer import artifacts, config
from fastinfer.buffers import KIND, VERSION, SeqBufferManager
from fastinfer.errors import ConfigError, InferenceError, ModelLoadError, StateError
from fastinfer.lock import LOCK_FILE, Lock, LockEntry, read_lock, write_lock
from fastinfer.state import unwrap, wrap

from ._hardening import hostile

MAX_MESSAGE = 600  # long enough for any honest message, far below a printed bomb


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- YAML config (#16.9, #16.11)


def _bomb(levels: int, key: str) -> str:
    """Each level repeats the previous one 8 times: 8**levels leaves from a few hundred bytes."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x]"]
    lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 8)}]" for k in range(1, levels)]
    return "\n".join(lines) + f"\nexecutor:\n  {key}: [*l{levels - 1}]\n"


def test_alias_bomb_under_a_known_key_is_refused_before_it_is_expanded(tmp_path):
    hostile("YAML config", "alias bomb of 8**7 strings under executor.providers")
    path = _config(tmp_path, _bomb(7, "providers"))
    assert path.stat().st_size < 1000
    start = time.process_time()
    with pytest.raises(ConfigError, match=r"more than 10000 YAML nodes once aliases are expanded") as info:
        config.load_config(path)
    assert time.process_time() - start < 5  # a bounded amount of work (was 30-60 s and all memory)
    assert len(str(info.value)) < MAX_MESSAGE


def test_recursive_alias_is_refused(tmp_path):
    hostile("YAML config", "self-referencing alias")
    with pytest.raises(ConfigError, match="more than 10000 YAML nodes"):
        config.load_config(_config(tmp_path, "models: &m\n  family_priority: *m\n"))


def test_duplicate_key_is_an_error_not_the_last_one_winning(tmp_path):
    hostile("YAML config", "duplicate key strict_checksums true then false")
    text = "models:\n  strict_checksums: true\n  strict_checksums: false\n"
    with pytest.raises(ConfigError, match=r"c\.yaml: line 3: key 'strict_checksums' given twice \(first at line 2\)"):
        config.load_config(_config(tmp_path, text))
    hostile("YAML config", "duplicate section")
    with pytest.raises(ConfigError, match="key 'models' given twice"):
        config.load_config(_config(tmp_path, "models: {}\npredictor: {}\nmodels: {}\n"))
    # YAML merge keys may still be overridden: that is what they are for.
    merged = "base: &b {lazy_load: false}\n"
    with pytest.raises(ConfigError, match="base: unknown key"):  # merging works; 'base' itself is unknown
        config.load_config(_config(tmp_path, merged + "models:\n  <<: *b\n  lazy_load: true\n"))


BOUNDED_CASES = {
    "interval_rel_tol 1e308": ("predictor:\n  interval_rel_tol: 1.0e+308\n", r"interval_rel_tol: 1e\+308 is outside"),
    "interval_rel_tol 0.6": ("predictor:\n  interval_rel_tol: 0.6\n", r"interval_rel_tol: 0.6 is outside \[0, 0.5\]"),
    "interval_rel_tol 400-digit int": (
        "predictor:\n  interval_rel_tol: " + "9" * 400 + "\n",
        r"interval_rel_tol: <int of 1329 bits>",
    ),
    "seq_buffer_size 1e30": ("models:\n  seq_buffer_size: 1.0e+30\n", "seq_buffer_size: expected an integer"),
    "seq_buffer_size 10**12": ("models:\n  seq_buffer_size: 1000000000000\n", r"seq_buffer_size: .* is outside"),
    "seq_buffer_size 400 digits": ("models:\n  seq_buffer_size: " + "9" * 400 + "\n", "seq_buffer_size: <int of"),
    "seq_buffer_size 5,000 digits": ("models:\n  seq_buffer_size: " + "9" * 5000 + "\n", "not valid YAML"),
    "seq_buffer_size 0": ("models:\n  seq_buffer_size: 0\n  seq_warmup_bars: 0\n", r"seq_buffer_size: 0 is outside"),
    "intra_op_threads 10**9": ("executor:\n  intra_op_threads: 1000000000\n", "intra_op_threads: .* is outside"),
    "unknown family": ("models:\n  family_priority: [lightgbm, gradient_magic]\n", r"family_priority\[1\]: unknown"),
    "huge string value": ("models:\n  seq_padding: " + "z" * 100_000 + "\n", r"seq_padding: 'zzz.*\.\.\. is not one"),
    "huge list value": ("models:\n  lazy_load: [" + "1, " * 50_000 + "1]\n", "more than 10000 YAML nodes"),
    "long list value": ("models:\n  lazy_load: [" + "1, " * 5_000 + "1]\n", r"lazy_load: expected true/false, got <"),
}


@pytest.mark.parametrize("case", list(BOUNDED_CASES))
def test_out_of_range_values_are_config_errors_naming_the_key(tmp_path, case):
    hostile("YAML config", case)
    text, match = BOUNDED_CASES[case]
    with pytest.raises(ConfigError, match=match) as info:
        config.load_config(_config(tmp_path, text))
    assert len(str(info.value)) < MAX_MESSAGE


def test_family_priority_is_checked_at_load_and_stored_canonical(tmp_path):
    settings = config.load_config(_config(tmp_path, "models:\n  family_priority: [LGBM, xgb, Ridge, rf]\n"))
    assert settings.models.family_priority == ("lightgbm", "xgboost", "ridge", "random_forest")
    with pytest.raises(ConfigError, match="known: lightgbm, xgboost"):
        config.from_dict({"models": {"family_priority": ["nope"]}})
    edge = config.load_config(_config(tmp_path, "predictor:\n  interval_rel_tol: 0.5\n"))
    assert edge.predictor.interval_rel_tol == 0.5


# ---------------------------------------------------------------- paths and JSON read through artifacts / lock


def _lock() -> Lock:
    entry = LockEntry("t", "CROSS_SECTIONAL", "ridge", None, None, "targets/m.joblib", "a" * 64, "native")
    return Lock([entry], created="v1")


def test_lock_read_through_a_link_out_of_the_run_is_refused(tmp_path):
    hostile("path escape", "fastinfer.lock.json is a symlink out of the run")
    run, outside = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    write_lock(outside, _lock())
    assert read_lock(outside).created == "v1"  # control: the file itself is a good lock
    (run / LOCK_FILE).symlink_to(outside / LOCK_FILE)
    with pytest.raises(StateError, match=r"fastinfer\.lock\.json link .* escapes the run root"):
        read_lock(run)
    (run / LOCK_FILE).unlink()
    (run / "sub").mkdir()
    write_lock(run / "sub", _lock())
    (run / LOCK_FILE).symlink_to(run / "sub" / LOCK_FILE)
    assert read_lock(run).created == "v1"  # a link that stays inside the run is followed


def test_manifest_read_through_a_link_out_of_the_run_is_refused(tmp_path):
    hostile("path escape", "manifest.json is a symlink out of the run")
    run = tmp_path / "run"
    (run / "targets").mkdir(parents=True)
    (tmp_path / "manifest.json").write_text(json.dumps({"target_index": {"secret": 1}}))
    (run / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(ModelLoadError, match=r"manifest\.json link .* escapes the run root"):
        artifacts.read_manifest(run)
    (run / "manifest.json").unlink()
    (run / "manifest.json").write_text(json.dumps({"target_index": {}}))
    assert artifacts.read_manifest(run) == {"target_index": {}}


def test_symlink_loop_named_by_model_file_is_a_model_load_error(run_copy):
    hostile("path escape", "model_file names a symlink loop")
    family_dir = next(run_copy.glob("targets/*/models/view=*/family=ridge"))
    (family_dir / "a").symlink_to(family_dir / "b")
    (family_dir / "b").symlink_to(family_dir / "a")
    meta_path = family_dir / "model_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_file"] = "a/model.joblib"
    meta_path.write_text(json.dumps(meta))
    loc = next(loc for loc in artifacts.discover(run_copy) if loc.family.name == "ridge")
    with pytest.raises(ModelLoadError, match=r"model_file '.*ridge/a/model\.joblib' is not a usable path") as info:
        artifacts.read_spec(loc, run_copy)
    assert info.value.family == "ridge"


LOCK_NUMBER_CASES = {
    "convert_seconds 4,000-digit int": ("convert_seconds", 10**4000, "convert_seconds"),
    "convert_seconds 1e308": ("convert_seconds", 1e308, "convert_seconds"),
    "opset 10**30": ("opsets", {"": 10**30}, r"opsets\[''\]"),
    "opset as text": ("opsets", {"": "17"}, r"opsets\[''\]"),
    "parity NaN": ("parity", {"max_abs": float("nan")}, r"parity\['max_abs'\]"),
    "parity n_rows 10**20": ("parity", {"n_rows": 10**20}, r"parity\['n_rows'\]"),
    "input shape 10**30": ("input", {"name": "features", "shape": ["N", 10**30]}, r"input\.shape"),
}


@pytest.mark.parametrize("case", list(LOCK_NUMBER_CASES))
def test_lock_numbers_are_bounded(tmp_path, case):
    hostile("lock JSON", case)
    field, value, match = LOCK_NUMBER_CASES[case]
    write_lock(tmp_path, _lock())
    data = json.loads((tmp_path / LOCK_FILE).read_text())
    data["entries"][0][field] = value
    # NaN is written as the NaN literal, which Python's json reads back
    (tmp_path / LOCK_FILE).write_text(json.dumps(data))
    with pytest.raises(StateError, match=rf"entries\[0\]\.{match}") as info:
        read_lock(tmp_path)
    assert len(str(info.value)) < MAX_MESSAGE


@pytest.mark.parametrize(
    "case,raw",
    [("100k-deep JSON", b"[" * 100_000 + b"]" * 100_000), ("5,000-digit int", b'{"version": ' + b"7" * 5000 + b"}")],
)
def test_lock_with_hostile_json_is_a_state_error(tmp_path, case, raw):
    hostile("lock JSON", case)
    (tmp_path / LOCK_FILE).write_bytes(raw)
    with pytest.raises(StateError, match="fastinfer.lock.json"):
        read_lock(tmp_path)


# ---------------------------------------------------------------- sequence buffers (#16.11)


def test_ttl_beyond_int64_nanoseconds_is_a_config_error():
    for ttl in (10**30, 1e30, float("inf"), float("nan"), np.timedelta64(10**17, "D"), np.timedelta64(1, "Y")):
        hostile("buffer argument", f"ttl {ttl!r}")
        with pytest.raises(ConfigError, match="ttl"):
            SeqBufferManager(4, 2, ttl=ttl)
    assert SeqBufferManager(4, 2, ttl=np.timedelta64(2, "h")).ttl_ns == 2 * 3600 * 10**9


def test_a_string_of_symbols_is_an_error_not_one_symbol_per_letter():
    hostile("buffer argument", 'symbols="MSFT"')
    with pytest.raises(InferenceError, match=r"symbols: expected a list of symbol names, got the string 'MSFT'"):
        SeqBufferManager(4, 2, symbols="MSFT")
    buffer = SeqBufferManager(4, 2, symbols=["MSFT", "AAPL"])
    with pytest.raises(InferenceError, match="got the string"):
        buffer.add_symbols("IBM")
    with pytest.raises(InferenceError, match="got the string"):
        buffer.get_batch("MSFT")
    assert buffer.symbols == ["MSFT", "AAPL"]


@pytest.mark.parametrize("dtype", [np.float16, np.int8, np.uint64, ">f4", ">f8"])
def test_rows_of_any_real_dtype_are_stored_as_float32(dtype):
    hostile("buffer row", f"dtype {np.dtype(dtype)}")
    buffer = SeqBufferManager(3, 2, symbols=["A", "B"])
    row = np.array([1, 2], dtype=dtype)
    buffer.push("A", row)
    buffer.push_all(np.array([[3, 4], [5, 6]], dtype=dtype))
    buffer.push_and_get_sequence("B", row)
    np.testing.assert_array_equal(buffer.get_batch()[:, -2:], [[[1, 2], [3, 4]], [[5, 6], [1, 2]]])


def test_sizes_are_bounded_where_they_enter():
    for args, match in [
        ((10**30, 4), r"seq_len must be an integer in \[1, 100000\], got <int of"),
        ((60, 0), "n_features must be an integer"),
        ((100_000, 100_000), "floats per symbol"),
        ((60, 4.0), "n_features"),
    ]:
        hostile("buffer argument", f"sizes {args!r}"[:60])
        with pytest.raises(ConfigError, match=match):
            SeqBufferManager(*args)


def _state_with(change) -> dict:
    buffer = SeqBufferManager(3, 2, symbols=["A"], ttl=60)
    buffer.push("A", [1.0, 2.0], timestamp=10**18)
    _, payload = unwrap(buffer.to_dict(), KIND, {VERSION})
    change(payload)
    return wrap(KIND, VERSION, payload)  # a consistent checksum: the field's own check must refuse it


BUFFER_STATE_CASES = {
    "stamp 2**63": (lambda p: p.update(stamps=[2**63]), "stamps"),
    "stamp 10**40": (lambda p: p.update(stamps=[10**40]), "stamps"),
    "ttl_ns 10**30": (lambda p: p.update(ttl_ns=10**30), "ttl_ns"),
    "seq_len 10**30": (lambda p: p.update(seq_len=10**30), "seq_len"),
    "counts 2**70": (lambda p: p.update(counts=[2**70]), "counts"),
    "float16 rows": (lambda p: p["rows"].update(dtype="<f2"), "rows"),
    "all-inf rows": (lambda p: p["rows"].update(data=_inf_rows(p["rows"])), "rows"),
}


def _inf_rows(rows: dict) -> str:
    return base64.b64encode(np.full(rows["shape"], np.inf, dtype="<f4").tobytes()).decode()


@pytest.mark.parametrize("case", list(BUFFER_STATE_CASES))
def test_buffer_state_fields_are_bounded(case):
    hostile("buffer state", case)
    change, field = BUFFER_STATE_CASES[case]
    with pytest.raises(StateError, match=rf"buffer state: field '{field}'") as info:
        SeqBufferManager.from_dict(_state_with(change))
    assert len(str(info.value)) < MAX_MESSAGE


def test_buffer_state_dict_holding_a_5000_digit_int_is_a_state_error():
    hostile("buffer state", "5,000-digit int put in the dict in-process")
    state = SeqBufferManager(3, 2, symbols=["A"]).to_dict()
    state["payload"]["stamps"] = [10**5000]  # JSON cannot even print it
    with pytest.raises(StateError, match="buffer state: field 'payload': not canonical JSON"):
        SeqBufferManager.from_dict(state)


@pytest.mark.parametrize(
    "case,raw",
    [
        ("100k-deep JSON", b"[" * 100_000 + b"]" * 100_000),
        ("5,000-digit int", b'{"format": "fastinfer.state", "version": ' + b"9" * 5000 + b"}"),
    ],
)
def test_buffer_state_file_with_hostile_json_is_a_state_error(tmp_path, case, raw):
    hostile("buffer state", f"file: {case}")
    path = tmp_path / "buffer.json"
    path.write_bytes(raw)
    with pytest.raises(StateError, match=r"buffer\.json: not a valid state file"):
        SeqBufferManager.load(path)


def test_version_1_buffer_state_is_still_read(tmp_path):
    """The flat format before the envelope (what checkpoints written until now hold), built here
    from its definition: rows end-aligned, zero-padded, base64 float32, sha256 over the rows."""
    rng = np.random.default_rng(3)
    buffer = SeqBufferManager(4, 2, "B", symbols=["A", "B"], warmup_bars=2, ttl=5)
    for k in range(6):
        buffer.push("A", rng.standard_normal(2), timestamp=k * 10**9)
    buffer.push("B", [7.0, 8.0], timestamp=5 * 10**9)
    rows = np.zeros((2, 4, 2), dtype=np.float32)  # version 1: zero padding, whatever the padding rule
    rows[0] = buffer.get_sequence("A")[0]  # A is full
    rows[1, 3] = [7.0, 8.0]  # B holds one row
    raw = rows.astype("<f4").tobytes()
    legacy = {
        "format": "fastinfer.seqbuffer",
        "version": 1,
        "seq_len": 4,
        "n_features": 2,
        "warmup_bars": 2,
        "padding": "repeat_first",
        "ttl_ns": 5 * 10**9,
        "symbols": ["A", "B"],
        "default_index": 1,
        "counts": [4, 1],
        "stamps": [5 * 10**9, 5 * 10**9],
        "dtype": "<f4",
        "data": base64.b64encode(raw).decode(),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(legacy))
    assert SeqBufferManager.load(path).to_dict() == buffer.to_dict()
    legacy["stamps"] = [2**63, None]
    with pytest.raises(StateError, match="field 'stamps'"):
        SeqBufferManager.from_dict(legacy)
