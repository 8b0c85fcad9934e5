"""Signed runs: keygen, sign, verify; a loader that refuses an unsigned, tampered or foreign run."""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastinfer import config, signing
from fastinfer.cli import main
from fastinfer.errors import ConfigError, SignatureError
from fastinfer.integrity import sha256_file
from fastinfer.loader import ModelLoader
from fastinfer.lock import LOCK_FILE

from ._hardening import hostile
from .conftest import TARGET

FAMILIES = ["lightgbm", "ridge", "mlp"]


def _dir(root: Path, family: str) -> Path:
    return root / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / f"family={family}"


@pytest.fixture
def keys(tmp_path):
    return signing.generate_keypair(tmp_path / "keys" / "release")


@pytest.fixture
def signed(compiled_copy, keys):
    signing.sign_run(compiled_copy, keys[0])
    return compiled_copy


def _loader(root, pub, **kw):
    return ModelLoader(root, verify_signature=True, trusted_public_key=pub, **kw)


def test_keygen_writes_pem_keys_private_one_unreadable_to_others(keys):
    private, public = keys
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert signing.load_private_key(private).public_key() == signing.load_public_key(public)
    with pytest.raises(SignatureError, match="refusing to overwrite"):
        signing.generate_keypair(private.with_suffix(""))


def test_signed_run_loads_and_predicts_like_an_unsigned_one(signed, keys, synthetic):
    X, _ = synthetic
    info = signing.verify_run(signed, keys[1])
    lock = json.loads((signed / LOCK_FILE).read_text())
    listed = {e[k] for e in lock["entries"] for k in ("native_file", "onnx_file") if e[k]}
    metas = {str(Path(e["native_file"]).parent / "model_meta.json") for e in lock["entries"]}
    assert {LOCK_FILE, "manifest.json"} | listed | metas <= set(info.files)
    assert all(info.files[f] == sha256_file(signed / f) for f in info.files)
    trusted, plain = _loader(signed, keys[1]), ModelLoader(signed)
    for family in FAMILIES:
        a, b = trusted.load(TARGET, family), plain.load(TARGET, family)
        assert a.backend == b.backend == "onnx"
        rows = X[list(a.feature_order)].to_numpy()[:8]
        np.testing.assert_array_equal(a.predict(rows), b.predict(rows))


def test_signature_is_the_model_signing_layout_and_verifies_independently(signed, keys):
    """The bundle → DSSE → in-toto statement shape of OpenSSF model-signing v1.0; the Ed25519
    signature over the DSSE PAE checks with the cryptography package alone."""
    bundle = json.loads((signed / signing.SIG_FILE).read_text())
    envelope = bundle["dsseEnvelope"]
    payload = base64.b64decode(envelope["payload"])
    statement = json.loads(payload)
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    names = [r["name"] for r in statement["predicate"]["resources"]]
    assert names == sorted(names) and statement["predicate"]["serialization"]["method"] == "files"
    pub = signing.load_public_key(keys[1])
    pae = b"DSSEv1 %d %s %d %s" % (
        len(envelope["payloadType"]),
        envelope["payloadType"].encode(),
        len(payload),
        payload,
    )
    pub.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae)  # raises if not
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == signing.key_id(pub)


def test_unsigned_run_is_refused_before_anything_is_read(compiled_copy, keys, tmp_path):
    hostile("signature", "missing signature")
    marker = tmp_path / "pwned"
    _plant_pickle(compiled_copy, marker, rechecksum=True)
    with pytest.raises(SignatureError, match="not signed") as info:
        _loader(compiled_copy, keys[1])
    assert info.value.path.endswith(signing.SIG_FILE)
    assert not marker.exists()
    ModelLoader(compiled_copy, allow_unsigned=True).load(TARGET, "ridge", view=None)  # control: unsigned mode opens it
    assert marker.exists()


TAMPERED = {
    "lock": LOCK_FILE,
    "native model.txt": "targets/{t}/models/view=CROSS_SECTIONAL/family=lightgbm/model.txt",
    "ONNX graph": "targets/{t}/models/view=CROSS_SECTIONAL/family=mlp/model.onnx",
    "model_meta.json": "targets/{t}/models/view=CROSS_SECTIONAL/family=ridge/model_meta.json",
    "manifest.json": "manifest.json",
}


@pytest.mark.parametrize("what", list(TAMPERED))
def test_changed_signed_file_is_refused_naming_it(signed, keys, what):
    hostile("signature", f"tampered {what}")
    rel = TAMPERED[what].format(t=TARGET)
    path = signed / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="signed file changed") as info:
        _loader(signed, keys[1])
    assert info.value.path == str(path)


def test_first_mismatching_file_is_named(signed, keys):
    hostile("signature", "two files changed")
    for family in ("ridge", "lightgbm"):  # family=lightgbm sorts first
        (_dir(signed, family) / "model_meta.json").write_text("{}")
    with pytest.raises(SignatureError) as info:
        signing.verify_run(signed, keys[1])
    assert "family=lightgbm" in info.value.path


def test_deleted_signed_file_is_refused(signed, keys):
    hostile("signature", "deleted file")
    (_dir(signed, "ridge") / "model.onnx").unlink()
    with pytest.raises(SignatureError, match="missing") as info:
        _loader(signed, keys[1])
    assert info.value.path.endswith("family=ridge/model.onnx")


def test_symlinked_signed_file_is_refused(signed, keys, tmp_path):
    hostile("signature", "signed file swapped for a symlink")
    path = _dir(signed, "ridge") / "model.onnx"
    copy = tmp_path / "elsewhere.onnx"
    copy.write_bytes(path.read_bytes())  # same bytes, but outside the run
    path.unlink()
    path.symlink_to(copy)
    with pytest.raises(Exception, match="escapes the run root|symbolic link"):
        _loader(signed, keys[1])


def _resign(root: Path, mutate) -> None:
    """Rewrite the signature file with ``mutate(bundle)`` applied."""
    path = root / signing.SIG_FILE
    bundle = json.loads(path.read_text())
    mutate(bundle)
    path.write_text(json.dumps(bundle))


def _swap_payload(bundle, other_statement):
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(other_statement).encode()).decode()


def _statement(bundle):
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


BAD_SIGNATURES = {
    "garbage": (lambda root, keys: (root / signing.SIG_FILE).write_bytes(b"\x00\xff not json"), "malformed"),
    "truncated": (
        lambda root, keys: (root / signing.SIG_FILE).write_bytes((root / signing.SIG_FILE).read_bytes()[:200]),
        "malformed",
    ),
    "no signatures": (lambda root, keys: _resign(root, lambda b: b["dsseEnvelope"].update(signatures=[])), "malformed"),
    "bad base64": (
        lambda root, keys: _resign(root, lambda b: b["dsseEnvelope"]["signatures"][0].update(sig="!!")),
        "malformed",
    ),
    "altered statement": (
        lambda root, keys: _resign(
            root,
            lambda b: _swap_payload(b, {**_statement(b), "predicate": {**_statement(b)["predicate"], "resources": []}}),
        ),
        "does not verify",
    ),
    "zeroed signature": (
        lambda root, keys: _resign(
            root, lambda b: b["dsseEnvelope"]["signatures"][0].update(sig=base64.b64encode(bytes(64)).decode())
        ),
        "does not verify",
    ),
    "wrong payload type": (
        lambda root, keys: _resign(root, lambda b: b["dsseEnvelope"].update(payloadType="text/plain")),
        "payload type",
    ),
    "another key's hint": (
        lambda root, keys: _resign(root, lambda b: b["verificationMaterial"]["publicKey"].update(hint="0" * 64)),
        "signed by another key",
    ),
    "huge": (
        lambda root, keys: (root / signing.SIG_FILE).write_bytes(b" " * (signing.MAX_SIG_BYTES + 1)),
        "larger than",
    ),
    "directory": (
        lambda root, keys: ((root / signing.SIG_FILE).unlink(), (root / signing.SIG_FILE).mkdir()),
        "not signed",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SIGNATURES))
def test_bad_signature_files_are_refused(signed, keys, case):
    hostile("signature", case)
    damage, match = BAD_SIGNATURES[case]
    _loader(signed, keys[1])  # control: good before the damage
    damage(signed, keys)
    with pytest.raises(SignatureError, match=match):
        _loader(signed, keys[1])


def test_signature_from_another_key_is_refused(signed, keys, tmp_path):
    hostile("signature", "signed by an untrusted key")
    _, other = signing.generate_keypair(tmp_path / "other")
    with pytest.raises(SignatureError, match="signed by another key"):
        _loader(signed, other)
    attacker = Ed25519PrivateKey.generate()  # re-signed by the attacker after tampering
    (_dir(signed, "ridge") / "model_meta.json").write_text("{}")
    with pytest.raises(SignatureError, match="refusing to sign|signed file"):
        signing.verify_run(signed, keys[1])
    signing.sign_run(signed, attacker)
    with pytest.raises(SignatureError, match="signed by another key"):
        _loader(signed, keys[1])


@pytest.mark.parametrize("content", [b"not a key", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_unusable_public_key_is_a_signature_error(signed, tmp_path, content):
    hostile("signature", f"bad public key {content[:10]!r}")
    path = tmp_path / "bad.pub"
    path.write_bytes(content)
    with pytest.raises(SignatureError, match="not a usable PEM public key"):
        _loader(signed, path)


def test_rsa_or_missing_key_refused(signed, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    hostile("signature", "non-Ed25519 key")
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError, match="expected Ed25519"):
        _loader(signed, pem)
    with pytest.raises(SignatureError, match="cannot read public key"):
        _loader(signed, tmp_path / "nope.pub")
    with pytest.raises(ConfigError, match="trusted_public_key"):
        ModelLoader(signed, verify_signature=True)


def test_model_outside_the_signed_lock_is_not_trusted(compiled_copy, keys):
    hostile("signature", "model not in the signed lock")
    lock = json.loads((compiled_copy / LOCK_FILE).read_text())
    lock["entries"] = [e for e in lock["entries"] if e["family"] != "lightgbm"]
    (compiled_copy / LOCK_FILE).write_text(json.dumps(lock))
    signing.sign_run(compiled_copy, keys[0])
    loader = _loader(compiled_copy, keys[1])
    assert loader.load(TARGET, "ridge").backend == "onnx"  # control
    with pytest.raises(SignatureError, match="not in the signed lock"):
        loader.load(TARGET, "lightgbm")


def _plant_pickle(root: Path, marker: Path, rechecksum: bool) -> Path:
    from .test_loader import _Payload

    path = _dir(root, "ridge") / "model.joblib"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    if rechecksum:  # a consistent attacker: the meta's checksum matches the payload
        meta = json.loads((_dir(root, "ridge") / "model_meta.json").read_text())
        meta["model_checksum"] = sha256_file(path)
        (_dir(root, "ridge") / "model_meta.json").write_text(json.dumps(meta))
    lock = json.loads((root / LOCK_FILE).read_text())
    for e in lock["entries"]:
        if e["family"] == "ridge":
            e["status"], e["onnx_file"], e["onnx_sha256"] = "native", None, None
            e["native_sha256"] = sha256_file(path)
    (root / LOCK_FILE).write_text(json.dumps(lock))
    return path


def test_pickle_swapped_in_after_signing_never_runs(signed, keys, tmp_path):
    hostile("signature", "pickle payload swapped in after signing")
    marker = tmp_path / "pwned"
    _plant_pickle(signed, marker, rechecksum=True)
    with pytest.raises(SignatureError):
        _loader(signed, keys[1])
    assert not marker.exists()


def test_file_changed_after_the_run_was_opened(signed, keys):
    hostile("signature", "native file changed after open")
    loader = _loader(signed, keys[1], prefer_onnx=False)
    assert loader.load(TARGET, "ridge").backend == "native"  # control
    path = _dir(signed, "lightgbm") / "model.txt"
    path.write_bytes(path.read_bytes().replace(b"shrinkage=", b"shrinkage=9", 1))
    with pytest.raises(SignatureError, match="changed since the run was opened"):
        loader.load(TARGET, "lightgbm")
    meta = _dir(signed, "xgboost") / "model_meta.json"
    meta.write_text(meta.read_text() + " ")
    with pytest.raises(SignatureError, match="changed since the run was opened"):
        loader.load(TARGET, "xgboost")


def test_signing_a_tampered_run_is_refused(compiled_copy, keys):
    hostile("signature", "sign a run whose files differ from its lock")
    path = _dir(compiled_copy, "ridge") / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(SignatureError, match="refusing to sign") as info:
        signing.sign_run(compiled_copy, keys[0])
    assert info.value.path == str(path)
    assert not (compiled_copy / signing.SIG_FILE).exists()
    (compiled_copy / LOCK_FILE).unlink()
    with pytest.raises(SignatureError, match="fastinfer convert"):
        signing.sign_run(compiled_copy, keys[0])


def test_encrypted_private_key(compiled_copy, tmp_path):
    private, public = signing.generate_keypair(tmp_path / "enc", password=b"s3cret")
    with pytest.raises(SignatureError, match="not a usable PEM private key"):
        signing.load_private_key(private)
    signing.sign_run(compiled_copy, private, password=b"s3cret")
    assert _loader(compiled_copy, public).signed is not None


def test_config_keys(tmp_path, signed, keys):
    with pytest.raises(ConfigError, match="trusted_public_key"):
        config.from_dict({"models": {"verify_signature": True}})
    with pytest.raises(ConfigError, match="trusted_public_key: expected a non-empty string"):
        config.from_dict({"models": {"trusted_public_key": 5}})
    cfg = keys[1].parent / "live.yaml"  # a relative key path is taken from the config file's folder
    cfg.write_text(f"models:\n  verify_signature: true\n  trusted_public_key: {keys[1].name}\n")
    settings = config.load_config(cfg)
    assert settings.models.trusted_public_key == str(keys[1].resolve())
    assert ModelLoader(signed, config_path=cfg).signed is not None
    (signed / signing.SIG_FILE).unlink()
    with pytest.raises(SignatureError, match="not signed"):
        ModelLoader(signed, config_path=cfg)


def test_cli_keygen_sign_verify(compiled_copy, tmp_path):
    runner = CliRunner()
    prefix = tmp_path / "k" / "ops"
    result = runner.invoke(main, ["keygen", str(prefix)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["sign", str(compiled_copy), "--key", f"{prefix}.key"])
    assert result.exit_code == 0 and "signed" in result.output, result.output
    result = runner.invoke(main, ["verify", str(compiled_copy), "--public-key", f"{prefix}.pub"])
    assert result.exit_code == 0 and "ok   signature" in result.output, result.output
    (_dir(compiled_copy, "ridge") / "model_meta.json").write_text("{}")
    result = runner.invoke(main, ["verify", str(compiled_copy), "--public-key", f"{prefix}.pub"])
    assert result.exit_code == 1 and "FAIL signature" in result.output and "model_meta.json" in result.output
    result = runner.invoke(main, ["sign", str(compiled_copy), "--key", str(tmp_path / "missing.key")])
    assert result.exit_code == 2 and "cannot read private key" in result.output


# ---------------------------------------------------------------- every file a signed loader reads is signed


def _touch_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_meta_edited_after_open_is_refused_by_spec_and_feature_list(signed, keys):
    hostile("signature", "model_meta.json edited after the run was opened (spec / get_feature_list)")
    loader = _loader(signed, keys[1])
    features = loader.get_feature_list(TARGET, "ridge")  # control: the signed meta reads
    assert loader.spec(TARGET, "ridge").feature_list == tuple(features)
    meta = _dir(signed, "ridge") / "model_meta.json"
    _touch_json(meta, feature_list=list(reversed(features)))
    with pytest.raises(SignatureError, match="changed since the run was opened") as info:
        loader.spec(TARGET, "ridge")
    assert info.value.path == str(meta)
    with pytest.raises(SignatureError, match="changed since the run was opened"):
        loader.get_feature_list(TARGET, "ridge")
    assert ModelLoader(signed).get_feature_list(TARGET, "ridge") == list(reversed(features))  # unsigned mode


def _routing(root: Path) -> Path:
    return root / "targets" / TARGET / "models" / "view=CROSS_SECTIONAL" / "routing_decision.json"


def test_routing_decision_edited_after_open_is_refused(signed, keys):
    hostile("signature", "routing_decision.json edited after the run was opened")
    loader = _loader(signed, keys[1])
    good = loader.get_routing_decision(TARGET)
    assert good and good["selected_family"]  # control
    _touch_json(_routing(signed), selected_family="attacker_pick")
    with pytest.raises(SignatureError, match="changed since the run was opened") as info:
        loader.get_routing_decision(TARGET)
    assert info.value.path == str(_routing(signed))
    assert ModelLoader(signed).get_routing_decision(TARGET)["selected_family"] == "attacker_pick"  # unsigned mode


def test_routing_decision_added_after_signing_is_refused(compiled_copy, keys):
    hostile("signature", "routing_decision.json added after signing")
    routing = _routing(compiled_copy)
    content = routing.read_bytes()
    routing.unlink()  # signed without one
    signing.sign_run(compiled_copy, keys[0])
    loader = _loader(compiled_copy, keys[1])
    assert loader.get_routing_decision(TARGET) is None  # control: none signed, none there
    decision = compiled_copy / "targets" / TARGET / "decision" / "routing_decision.json"
    decision.parent.mkdir()
    decision.write_bytes(content)  # an unlisted file: verify_run never hashes it
    _loader(compiled_copy, keys[1])  # the run still opens (nothing signed changed) ...
    with pytest.raises(SignatureError, match="not covered by the signature") as info:
        loader.get_routing_decision(TARGET)  # ... but the new file is never served
    assert info.value.path == str(decision)
    with pytest.raises(SignatureError, match="not covered by the signature"):
        _loader(compiled_copy, keys[1]).get_routing_decision(TARGET)
    assert ModelLoader(compiled_copy).get_routing_decision(TARGET) == json.loads(content)  # unsigned mode


def test_manifest_edited_after_open_is_refused_by_list_targets(signed, keys):
    hostile("signature", "manifest.json edited after the run was opened")
    loader = _loader(signed, keys[1])
    assert loader.list_targets() == [TARGET]  # control
    _touch_json(signed / "manifest.json", target_index={"fwd_ret_evil": {"families": ["ridge"]}})
    with pytest.raises(SignatureError, match="changed since the run was opened") as info:
        loader.list_targets()
    assert info.value.path == str(signed / "manifest.json")
    assert ModelLoader(signed).list_targets() == [TARGET]  # unsigned mode


def test_meta_of_a_model_file_in_a_subfolder_is_signed_and_checked(compiled_copy, keys):
    """``model_file`` may put the native file in a subfolder: the meta signed and checked is the
    model folder's own (the one the loader reads), never skipped for want of a digest."""
    hostile("signature", "model_meta.json not beside the native file (model_file in a subfolder)")
    folder = _dir(compiled_copy, "ridge")
    (folder / "sub").mkdir()
    (folder / "model.joblib").rename(folder / "sub" / "model.joblib")
    _touch_json(folder / "model_meta.json", model_file="sub/model.joblib")
    lock = json.loads((compiled_copy / LOCK_FILE).read_text())
    for e in lock["entries"]:
        if e["family"] == "ridge":
            e["native_file"] = str(Path(e["native_file"]).parent / "sub" / "model.joblib")
    (compiled_copy / LOCK_FILE).write_text(json.dumps(lock))
    signing.sign_run(compiled_copy, keys[0])
    info = signing.verify_run(compiled_copy, keys[1])
    assert (folder / "model_meta.json").relative_to(compiled_copy).as_posix() in info.files
    for prefer_onnx in (True, False):  # control: both backends open from the signed files
        loader = _loader(compiled_copy, keys[1], prefer_onnx=prefer_onnx)
        assert loader.load(TARGET, "ridge").integrity == "verified"
    loader = _loader(compiled_copy, keys[1], prefer_onnx=False)
    _touch_json(folder / "model_meta.json", metrics={"r2": 0.99})
    for read in (lambda: loader.load(TARGET, "ridge"), lambda: loader.spec(TARGET, "ridge")):
        with pytest.raises(SignatureError, match="changed since the run was opened"):
            read()
    assert ModelLoader(compiled_copy).spec(TARGET, "ridge").metrics == {"r2": 0.99}  # unsigned mode


def test_signed_loader_hashes_each_native_file_once(signed, keys, monkeypatch):
    """verify_run hashed every file when the run was opened; load() hashes the native file
    once more (to catch a change since), on the bytes it opens where the format allows."""
    from fastinfer import integrity

    loader = _loader(signed, keys[1], prefer_onnx=False)
    real, made = integrity.hashlib.sha256, []

    def counting(*args):
        made.append(args)
        return real(*args)

    monkeypatch.setattr(integrity, "hashlib", SimpleNamespace(sha256=counting))
    for family in ("ridge", "lightgbm", "xgboost"):  # joblib, LightGBM text, XGBoost JSON (opened by path)
        made.clear()
        assert loader.load(TARGET, family).integrity == "verified"
        assert len(made) == 1, family


def test_verify_with_a_public_key_fails_on_a_model_the_signature_does_not_cover(signed, keys):
    """A model folder added after signing: the default (unsigned) loader would open it, so
    ``verify --public-key`` must not pass the run (it used to say "verified (not in lock)")."""
    from click.testing import CliRunner

    from fastinfer.cli import main

    hostile("signature", "signed run holding an unsigned model, verify --public-key")
    ok = CliRunner().invoke(main, ["verify", str(signed), "--public-key", str(keys[1])])
    assert ok.exit_code == 0, ok.output
    src = _dir(signed, "ridge")
    extra = signed / "targets" / "fwd_ret_extra" / "models" / "view=CROSS_SECTIONAL" / "family=ridge"
    shutil.copytree(src, extra)
    (extra / "model.onnx").unlink()
    assert ModelLoader(signed).load("fwd_ret_extra", "ridge") is not None  # an unsigned loader opens it
    result = CliRunner().invoke(main, ["verify", str(signed), "--public-key", str(keys[1])])
    assert result.exit_code == 1
    assert "FAIL fwd_ret_extra/ridge: not covered by the signature" in result.output


def test_deep_signature_file_and_lock_link_out_of_the_run_are_signature_errors(signed, keys, tmp_path):
    hostile("signature", "100k-deep JSON signature file")
    sig = signed / signing.SIG_FILE
    good = sig.read_bytes()
    sig.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(SignatureError, match="malformed signature file"):
        _loader(signed, keys[1])
    sig.write_bytes(good)
    _loader(signed, keys[1])  # control
    hostile("signature", "fastinfer.lock.json a link out of the run")
    outside = tmp_path / "elsewhere.json"
    shutil.copy(signed / LOCK_FILE, outside)
    (signed / LOCK_FILE).unlink()
    (signed / LOCK_FILE).symlink_to(outside)
    with pytest.raises(SignatureError, match="escapes the run root"):
        _loader(signed, keys[1])
