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

from .errors import IntegrityError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
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
