"""fastinfer.state: the one envelope every saved state uses (#16.10, #18.6)."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest

from fastinfer import state
from fastinfer.errors import StateError

from ._hardening import hostile


def _payload():
    rng = np.random.default_rng(0)
    return {
        "symbols": ["A", "B"],
        "count": 3,
        "ratio": 0.1,
        "nested": {"stamps": [None, 1_700_000_000_000_000_000]},
        "rows": state.encode_array(rng.standard_normal((2, 3)).astype(np.float32)),
    }


def test_round_trip_through_json_and_the_checksum_is_over_canonical_json():
    payload = _payload()
    env = state.wrap("demo", 4, payload)
    assert set(env) == {"format", "kind", "version", "sha256", "payload"}
    # Independent reference: sha256 of the payload as sorted, compact, ASCII JSON.
    reference = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert env["sha256"] == hashlib.sha256(reference).hexdigest()
    text = json.dumps(env, indent=3)  # any formatting a writer chooses
    assert state.unwrap(json.loads(text), "demo", {3, 4}) == (4, payload)


def test_every_single_byte_flip_in_the_payload_is_caught():
    env = state.wrap("demo", 1, _payload())
    text = json.dumps(env["payload"], sort_keys=True)
    hostile("state envelope", "each payload byte flipped in turn")
    still_json = 0
    for i in range(len(text)):
        flipped = text[:i] + chr(ord(text[i]) ^ 1) + text[i + 1 :]
        try:
            damaged = json.loads(flipped)
        except ValueError:
            continue  # no longer JSON: the file reader refuses it
        with pytest.raises(StateError):
            state.unwrap({**env, "payload": damaged}, "demo", {1})
        still_json += 1
    assert still_json > len(text) // 2  # most flips still parse: the checksum, not JSON, caught them


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda e: e.update(kind="other"), "kind"),
        (lambda e: e.update(version=2), "version"),
        (lambda e: e.update(version=True), "version"),
        (lambda e: e.update(format="fastinfer.seqbuffer"), "format"),
        (lambda e: e.update(sha256="0" * 64), "sha256"),
        (lambda e: e.pop("sha256"), "sha256"),
        (lambda e: e.update(payload=[1, 2]), "payload"),
        (lambda e: e.update(extra=1), "extra"),
        (lambda e: e["payload"].update(ratio=float("nan")), "payload"),
    ],
)
def test_a_wrong_envelope_names_the_field(change, field):
    hostile("state envelope", f"wrong {field}")
    env = state.wrap("demo", 1, _payload())
    change(env)
    with pytest.raises(StateError, match=rf"ckpt: field '{field}'"):
        state.unwrap(env, "demo", {1}, source="ckpt")


def test_decode_array_checks_dtype_shape_size_base64_and_finiteness():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    enc = state.encode_array(a)
    np.testing.assert_array_equal(state.decode_array(enc, "rows", dtype="<f4", shape=(None, 3), finite=True), a)
    big_endian = state.encode_array(a.astype(">f8"))
    assert big_endian["dtype"] == "<f8"
    np.testing.assert_array_equal(state.decode_array(big_endian, "x", dtype=np.float64), a)
    cases = {
        "float16 rows": ({**enc, "dtype": "<f2"}, "dtype '<f2', expected '<f4'"),
        "other shape": ({**enc, "shape": [3, 2]}, r"shape \[3, 2\], expected \[None, 3\]"),
        "huge shape": ({**enc, "shape": [10**30, 3]}, "shorter than"),
        "negative dim": ({**enc, "shape": [-2, -3]}, "non-negative integers"),
        "bool dim": ({**enc, "shape": [True, 3]}, "non-negative integers"),
        "truncated": ({**enc, "data": enc["data"][:-8]}, "bytes"),
        "bad base64": ({**enc, "data": "!!!!" + enc["data"][4:]}, "base64"),
        "not a dict": ([1, 2], "expected an array object"),
        "inf": (state.encode_array(np.full((2, 3), np.inf, np.float32)), "NaN/inf"),
    }
    for case, (obj, match) in cases.items():
        hostile("state envelope", f"array: {case}")
        with pytest.raises(StateError, match=rf"s: field 'rows': .*{match}"):
            state.decode_array(obj, "rows", dtype="<f4", shape=(None, 3), finite=True, source="s")
    # finite=False keeps inf (a state that may legitimately hold it)
    assert np.isinf(state.decode_array(cases["inf"][0], "rows", dtype="<f4")).all()
    with pytest.raises(ValueError, match="not a state dtype"):  # a caller asking for float16: a bug
        state.decode_array(enc, "rows", dtype=np.float16)


def test_integer_fields_are_bounded_and_errors_never_print_huge_values():
    assert state.integer(5, "n", 0, 10) == 5
    for value in (10**5000, 2**63, -1, True, 3.0, "5"):
        hostile("state envelope", f"integer {type(value).__name__}")
        with pytest.raises(StateError, match="field 'n'") as info:
            state.integer(value, "n", 0, 2**63 - 1)
        assert len(str(info.value)) < 300
    assert state.short_repr(10**5000) == "<int of 16610 bits>"
    assert len(state.short_repr("x" * 10**6)) < 210


def test_files_with_hostile_json_are_state_errors(tmp_path):
    path = tmp_path / "s.json"
    state.save(path, "demo", 1, _payload())
    assert state.load(path, "demo", {1})[1] == _payload()
    cases = {
        "100k-deep JSON": b"[" * 100_000 + b"]" * 100_000,
        "5,000-digit int": b'{"format": "fastinfer.state", "version": ' + b"9" * 5000 + b"}",
        "deeper than the state limit": b'{"a":' * 40 + b"1" + b"}" * 40,
        "not UTF-8": b"\xff\xfe{}",
        "truncated": path.read_bytes()[:-30],
    }
    for case, raw in cases.items():
        hostile("state file", case)
        path.write_bytes(raw)
        with pytest.raises(StateError, match=rf"{path.name}: not a valid state file"):
            state.load(path, "demo", {1})
    with pytest.raises(FileNotFoundError):
        state.load(tmp_path / "missing.json", "demo", {1})


def test_arrays_are_plain_base64_of_little_endian_bytes():
    a = np.array([[1.5, -2.0]], dtype=np.float32)
    enc = state.encode_array(a)
    assert enc == {"dtype": "<f4", "shape": [1, 2], "data": base64.b64encode(a.astype("<f4").tobytes()).decode()}
