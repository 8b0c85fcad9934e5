"""Signed runs: an Ed25519 signature over the lock and every file the loader reads.

``sign_run(run_root, key)`` writes ``fastinfer.lock.sig`` beside ``fastinfer.lock.json``;
``verify_run(run_root, public_key)`` checks it and re-hashes every signed file, naming the
first one that changed. ``ModelLoader`` calls ``verify_run`` once, when it opens a run, if
``models.verify_signature`` is true.

What is signed: the lock's exact bytes (by sha256) and, for every lock entry, its native
file, its ONNX graph and its model folder's ``model_meta.json``, plus ``manifest.json``, the
``routing_decision.json`` files and the run's ``feature_definitions.yaml``. A signed loader reads
no file of the run that is not listed (``ModelLoader._signed_digest``). Before signing, the lock's
own sha256 records are checked against the files, so a tampered run is refused rather than signed.

Format: the layout of the OpenSSF model-signing v1.0 signature (a Sigstore-bundle-shaped
JSON holding a DSSE envelope whose payload is an in-toto Statement v1 with predicate type
``https://model_signing/signature/v1.0``: ``resources`` lists each file's sha256, the subject
digest is the sha256 over those digests in name order). The signature is Ed25519 over the
DSSE pre-authentication encoding (PAE). Keys are PEM: PKCS8 private, SubjectPublicKeyInfo
public. See SECURITY.md for how this maps onto model-signing's own verifier.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import artifacts
from .atomic import read_regular, write_atomic_bytes
from .errors import SignatureError, StateError
from .features.definitions import DEFINITIONS_FILE
from .integrity import sha256_file
from .lock import LOCK_FILE, Lock, parse_lock
from .state import parse_json

SIG_FILE = "fastinfer.lock.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
MAX_SIG_BYTES = 16 << 20  # a signature lists a few hundred files at most
METADATA_FILES = ("manifest.json", "routing_decision.json")


@dataclass(frozen=True)
class SignedRun:
    """What a good signature established: the lock's verified bytes and every signed digest."""

    run_root: Path
    key_id: str
    lock_bytes: bytes
    files: dict[str, str]  # path relative to the run root (posix) -> sha256 hex

    def lock(self) -> Lock:
        return parse_lock(self.run_root, self.lock_bytes)

    def digest(self, path: Path) -> str | None:
        """The signed sha256 of ``path`` (a file in the run), None if it was not signed.

        The folders on the way are resolved, the file's own name is not: a link named like a
        signed file is not that file (the loader refuses links to signed files outright).
        """
        path = Path(path)
        if not path.is_absolute():
            path = self.run_root / path
        try:
            rel = (path.parent.resolve() / path.name).relative_to(self.run_root.resolve()).as_posix()
        except (ValueError, OSError):
            return None
        return self.files.get(rel)


# ---------------------------------------------------------------- keys


def _fail(reason: str, path: Path | str | None = None) -> SignatureError:
    return SignatureError(None, None, reason, path)


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 of the key's SubjectPublicKeyInfo PEM: model-signing's public-key ``hint``."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def generate_keypair(out_prefix: str | Path, password: bytes | None = None) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (PKCS8 PEM, mode 0600) and ``PREFIX.pub`` (SPKI PEM); refuse to overwrite."""
    prefix = Path(out_prefix)
    private_path, public_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise _fail("refusing to overwrite an existing key file", p)
    key = Ed25519PrivateKey.generate()
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never world-readable, not even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    write_atomic_bytes(public_path, public_pem)
    return private_path, public_path


def _read_key_file(path: str | Path, what: str) -> bytes:
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > 64 << 10:
            raise _fail(f"{what} file is too large to be a PEM key", path)
        return read_regular(path, 64 << 10)
    except OSError as exc:
        raise _fail(f"cannot read {what} ({exc.strerror})", path) from None


def load_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError) as exc:
        raise _fail(f"not a usable PEM private key ({str(exc)[:120]})", path) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise _fail(f"private key is {type(key).__name__}, expected Ed25519", path)
    return key


def load_public_key(key: str | Path | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file path, PEM bytes, or a key object."""
    if isinstance(key, Ed25519PublicKey):
        return key
    source = "public key bytes" if isinstance(key, bytes) else key
    data = key if isinstance(key, bytes) else _read_key_file(key, "public key")
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise _fail(f"not a usable PEM public key ({str(exc)[:120]})", source) from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise _fail(f"public key is {type(loaded).__name__}, expected Ed25519", source)
    return loaded


# ---------------------------------------------------------------- the signed statement


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature actually covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _root_digest(resources: list[dict[str, str]]) -> str:
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r["digest"]))
    return h.hexdigest()


def _signed_paths(run_root: Path, lock: Lock) -> list[str]:
    """Every file the loader reads for the lock's models, relative to the run root.

    Each entry's ``model_meta.json`` is the one of its own model folder (what the loader
    reads), not the one beside the native file, which ``model_file`` may put in a subfolder.
    """
    paths = {LOCK_FILE}
    folders = {loc.key: loc.path for loc in artifacts.discover(run_root)}
    for e in lock.entries:
        if e.status == "failed":  # not servable, not signed: a signed loader refuses it
            continue
        artifacts.inside(run_root, e.native_file, what="lock native_file")
        paths.add(e.native_file)
        folder = folders.get(e.key)
        if folder is None:
            raise _fail(
                f"lock entry target={e.target!r} family={e.family!r} view={e.view!r} has no model "
                "folder in the run; refusing to sign",
                run_root / e.native_file,
            )
        paths.add((folder / artifacts.META_FILE).relative_to(run_root).as_posix())
        if e.onnx_file:
            paths.add(e.onnx_file)
    definitions = run_root / DEFINITIONS_FILE
    if definitions.is_file() and not definitions.is_symlink():
        paths.add(DEFINITIONS_FILE)
    for name in METADATA_FILES:
        for p in run_root.rglob(name):
            if p.is_file() and not p.is_symlink():
                paths.add(p.relative_to(run_root).as_posix())
    return sorted(Path(p).as_posix() for p in paths)


def _confined(run_root: Path, rel: str) -> Path:
    """``run_root / rel``, refused (``SignatureError``) if a link takes it out of the run."""
    try:
        return artifacts.inside(run_root, rel, what=f"{rel} link")
    except Exception as exc:  # ModelLoadError from artifacts: a signature problem here
        raise _fail(getattr(exc, "reason", str(exc)), run_root / rel) from None


def _hash_confined(run_root: Path, rel: str) -> str:
    """sha256 of a file of the run: refused if it is missing, a link, or outside the run."""
    path = run_root / rel
    artifacts.inside(run_root, rel, what="signed file")
    if path.is_symlink():
        raise _fail("signed file is a symbolic link (links are not signed)", path)
    if not path.is_file():
        raise _fail("signed file is missing", path)
    return sha256_file(path)


def sign_run(run_root: str | Path, private_key: str | Path | Ed25519PrivateKey, password: bytes | None = None) -> Path:
    """Sign a converted run: write ``fastinfer.lock.sig`` atomically; returns its path.

    Refuses (``SignatureError`` naming the file) when a file no longer matches the sha256 the
    lock recorded for it: a run is signed as converted, never as found.
    """
    root = artifacts.resolve_run_root(run_root)
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key, password)
    lock_path = _confined(root, LOCK_FILE)
    try:
        lock_bytes = read_regular(lock_path, artifacts.MAX_META_BYTES)
    except FileNotFoundError:
        raise _fail("run has no fastinfer.lock.json to sign: run `fastinfer convert` first", lock_path) from None
    except OSError as exc:  # a FIFO or folder in its place: refused, never waited on
        raise _fail(f"cannot read fastinfer.lock.json ({exc.strerror})", lock_path) from None
    lock = parse_lock(root, lock_bytes)
    for e in lock.entries:
        if e.status == "failed":
            continue
        for rel, want in ((e.native_file, e.native_sha256), (e.onnx_file, e.onnx_sha256)):
            if rel and _hash_confined(root, rel) != want:
                raise _fail("file differs from the sha256 the lock recorded; refusing to sign", root / rel)
    resources = []
    for rel in _signed_paths(root, lock):
        digest = hashlib.sha256(lock_bytes).hexdigest() if rel == LOCK_FILE else _hash_confined(root, rel)
        resources.append({"name": rel, "algorithm": "sha256", "digest": digest})
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": root.name, "digest": {"sha256": _root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": [SIG_FILE],
            },
            "resources": resources,
        },
    }
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_id(key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode(), "keyid": ""}],
        },
    }
    path = root / SIG_FILE
    write_atomic_bytes(path, json.dumps(bundle, indent=1, sort_keys=True).encode())
    return path


# ---------------------------------------------------------------- verification


def _field(obj: Any, *keys: str, kind: type = str) -> Any:
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            raise KeyError(".".join(keys))
        obj = obj[k]
    if not isinstance(obj, kind):
        raise KeyError(".".join(keys))
    return obj


def verify_run(run_root: str | Path, public_key: str | Path | bytes | Ed25519PublicKey) -> SignedRun:
    """Check the run's signature with ``public_key`` and re-hash every signed file.

    Raises ``SignatureError`` naming the signature file (missing, malformed, another key, bad
    signature) or the first signed file, in name order, that is missing or changed.
    """
    root = artifacts.resolve_run_root(run_root)
    key = load_public_key(public_key)
    sig_path = root / SIG_FILE
    if not sig_path.is_file() or sig_path.is_symlink():
        raise _fail("run is not signed (no fastinfer.lock.sig) and verify_signature is on", sig_path)
    if sig_path.stat().st_size > MAX_SIG_BYTES:
        raise _fail(f"signature file is larger than {MAX_SIG_BYTES} bytes", sig_path)
    try:
        raw = read_regular(sig_path, MAX_SIG_BYTES)
    except OSError as exc:  # swapped for a FIFO after the check above: refused, never waited on
        raise _fail(f"cannot read the signature ({exc.strerror})", sig_path) from None
    try:
        bundle = parse_json(raw, max_bytes=MAX_SIG_BYTES, max_depth=16)
        hint = _field(bundle, "verificationMaterial", "publicKey", "hint")
        envelope = _field(bundle, "dsseEnvelope", kind=dict)
        payload_type = _field(envelope, "payloadType")
        payload = base64.b64decode(_field(envelope, "payload"), validate=True)
        sigs = _field(envelope, "signatures", kind=list)
        if len(sigs) != 1:
            raise KeyError("signatures")
        signature = base64.b64decode(_field(sigs[0], "sig"), validate=True)
    except (ValueError, KeyError, binascii.Error) as exc:  # JSONLimitError is a ValueError
        raise _fail(f"malformed signature file ({type(exc).__name__}: {str(exc)[:80]})", sig_path) from None
    if hint != key_id(key):
        raise _fail(f"signed by another key (key id {hint[:16]}…, trusted key {key_id(key)[:16]}…)", sig_path)
    if payload_type != PAYLOAD_TYPE:
        raise _fail(f"unexpected payload type {payload_type!r}", sig_path)
    try:
        key.verify(signature, pae(payload_type, payload))
    except InvalidSignature:
        raise _fail("signature does not verify: the signed statement was altered", sig_path) from None
    # Signed by the trusted key from here on; the checks below guard against our own bugs.
    try:
        statement = json.loads(payload)
        if _field(statement, "_type") != STATEMENT_TYPE or _field(statement, "predicateType") != PREDICATE_TYPE:
            raise KeyError("_type/predicateType")
        resources = _field(statement, "predicate", "resources", kind=list)
        files = {_field(r, "name"): _field(r, "digest") for r in resources}
        subject = _field(statement, "subject", kind=list)[0]
        if _field(subject, "digest", "sha256") != _root_digest(sorted(resources, key=lambda r: r["name"])):
            raise KeyError("subject digest")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _fail(f"signed statement is not a fastinfer run statement ({str(exc)[:80]})", sig_path) from None
    if LOCK_FILE not in files:
        raise _fail("signed statement does not cover fastinfer.lock.json", sig_path)
    lock_bytes = b""
    for rel in sorted(files):
        if rel == LOCK_FILE:
            try:
                lock_bytes = read_regular(_confined(root, LOCK_FILE), artifacts.MAX_META_BYTES)
            except FileNotFoundError:
                raise _fail("signed file is missing", root / LOCK_FILE) from None
            except OSError as exc:  # a FIFO or folder in its place: refused, never waited on
                raise _fail(f"cannot read signed file ({exc.strerror})", root / LOCK_FILE) from None
            actual = hashlib.sha256(lock_bytes).hexdigest()
        else:
            actual = _hash_confined(root, rel)
        if actual != files[rel]:
            raise _fail(f"signed file changed: sha256 {actual[:16]}…, signed {files[rel][:16]}…", root / rel)
    try:
        lock = parse_lock(root, lock_bytes)
    except StateError as exc:
        raise _fail(f"signed lock does not parse ({exc})", root / LOCK_FILE) from None
    for e in lock.entries:  # the lock's own records must agree with what was signed
        if e.status == "failed":
            continue
        for rel, want in ((e.native_file, e.native_sha256), (e.onnx_file, e.onnx_sha256)):
            if rel and files.get(Path(rel).as_posix()) != want:
                raise _fail("lock lists a file the signature does not cover with the same sha256", root / rel)
    return SignedRun(root, hint, lock_bytes, files)
