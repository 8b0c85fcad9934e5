"""Streaming sha256 and the checksum policy.

The rule for code-carrying formats: a pickle (``model.pkl``, ``model.joblib``) runs code
when opened, so it is opened only after its sha256 matched the recorded checksum, or, with
``allow_unsigned``, when no checksum is recorded at all. A mismatch is never "warn and go
on" for a pickle, whatever ``strict_checksums`` says. The loader hashes a pickle's bytes in
memory and unpickles those same bytes (``actual``), never the file a second time.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .atomic import open_regular, read_regular
from .errors import IntegrityError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ChecksumPolicy:
    verify: bool = True  # compute and compare checksums of non-pickle files
    strict: bool = False  # a mismatch raises (else warns) for non-pickle files
    allow_unsigned: bool = False  # a file with no recorded checksum may load


def check_file(
    path: Path,
    expected: str | None,
    policy: ChecksumPolicy,
    *,
    family: str,
    target: str,
    executes_code: bool,
    actual: str | None = None,
) -> str:
    """Apply the policy to one file before it is opened; returns what was established.

    Returns "verified", "unverified" (checks off), "unsigned" (no checksum, allowed) or
    "mismatch" (non-strict, non-pickle). Raises ``IntegrityError`` when it must not load.
    ``actual``: the sha256 already computed over the bytes that will be opened (the file
    is then not read again).
    """
    if not expected:
        if not policy.allow_unsigned:
            raise IntegrityError(family, target, "no model_checksum recorded and allow_unsigned is false", path)
        log.warning("loading %s without a checksum (allow_unsigned)", path)
        return "unsigned"
    if not (policy.verify or executes_code):
        return "unverified"
    if actual is None:
        actual = sha256_file(path)
    if actual == expected.lower():
        return "verified"
    reason = f"sha256 mismatch: expected {expected[:16]}…, file has {actual[:16]}…"
    if executes_code:
        raise IntegrityError(family, target, f"{reason}; refusing to unpickle (opening a pickle runs code)", path)
    if policy.strict:
        raise IntegrityError(family, target, reason, path)
    log.warning("%s: %s (strict_checksums off: loading anyway)", path, reason)
    return "mismatch"


# ---------------------------------------------------------------- the trust policy of an open run


@dataclass(frozen=True)
class Verified:
    """Bytes read once, with what was established about them; open exactly these bytes."""

    data: bytes
    sha256: str
    status: str  # "verified", "unverified" (checks off), "unsigned" (no checksum, allowed), "mismatch"


class TrustPolicy:
    """What digest a file of the run must have, and what happens on a mismatch.

    Three modes: ``signed`` (the run's signature verified when it was opened: every file read
    must be covered by it, with the signed sha256), ``checksum`` (``model_checksum`` in each
    model's meta, under ``ChecksumPolicy``) and ``unsigned`` (checks off). Every read goes
    bytes → verify → the caller opens those same bytes, so a file swapped after its check is
    never what is opened.
    """

    def __init__(self, checksums: ChecksumPolicy, signed=None):
        self.checksums = checksums
        self.signed = signed  # fastinfer.signing.SignedRun, or None

    @property
    def mode(self) -> str:
        if self.signed is not None:
            return "signed"
        return "checksum" if self.checksums.verify else "unsigned"

    def signed_digest(self, path: Path, *, family: str | None = None, target: str | None = None) -> str | None:
        """The signed sha256 ``path`` must have; None when the run is not opened signed.

        In a signed run a file the signature does not cover (added after signing, or reached
        through a link) is a ``SignatureError`` naming it.
        """
        if self.signed is None:
            return None
        from .errors import SignatureError

        path = Path(path)
        digest = None if path.is_symlink() else self.signed.digest(path)
        if digest is None:
            raise SignatureError(family, target, f"{path.name} is not covered by the signature: not trusted", path)
        return digest

    def read_native(
        self, path: Path, recorded: str | None, *, family: str, target: str, executes_code: bool
    ) -> Verified:
        """A native model file's bytes under the policy (``recorded``: the meta's model_checksum)."""
        from .errors import ModelLoadError, SignatureError

        signed = self.signed_digest(path, family=family, target=target)
        try:
            data = read_regular(path)
        except OSError as exc:
            raise ModelLoadError(family, target, f"cannot read model file ({exc.strerror})", path) from None
        digest = sha256_bytes(data)
        if signed is not None and digest != signed:
            raise SignatureError(family, target, "native model file changed since the run was opened", path)
        status = check_file(
            Path(path),
            recorded,
            self.checksums,
            family=family,
            target=target,
            executes_code=executes_code,
            actual=digest,
        )
        return Verified(data, digest, status)

    def read_graph(self, path: Path, expected: str, *, family: str, target: str) -> Verified | None:
        """A converted graph's bytes, which must have the lock's sha256 (signed in a signed run).

        A mismatch raises in a signed run or under ``strict_checksums``; otherwise it warns and
        returns None: the model is then served from its native file.
        """
        from .errors import IntegrityError, ModelLoadError, SignatureError

        self.signed_digest(path, family=family, target=target)  # a signed run reads only signed files
        try:
            data = read_regular(path)
        except OSError as exc:
            raise ModelLoadError(family, target, f"cannot read graph ({exc.strerror})", path) from None
        digest = sha256_bytes(data)
        if digest == expected:
            return Verified(data, digest, "verified")
        if self.signed is not None:
            raise SignatureError(family, target, "signed ONNX graph changed since the run was opened", path)
        if self.checksums.strict:
            raise IntegrityError(family, target, "ONNX graph sha256 differs from the lock", path)
        log.warning("%s: ONNX graph sha256 differs from the lock: serving native", path)
        return None
