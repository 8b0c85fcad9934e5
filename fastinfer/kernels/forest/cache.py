"""Keep numba's on-disk cache of the forest kernels in step with this package's source.

numba (``cache=True``) revalidates a cached kernel against its own file only, but these kernels
inline helpers (``extend``, ``finish``) and constants (``codes``) from sibling modules: an edit
there, or a ``git pull`` that changes only those files, would keep serving the old machine code.
`refresh` stamps the source of every module the kernels are built from next to the cache and
empties every kernel's cache index when the stamp changes, so the next call compiles afresh.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

_STAMP = "forest-kernels.source-sha256"
# The modules numba compiles into the kernels: the kernels' own, their helpers, the constants.
KERNEL_SOURCES = ("bitvector.py", "codes.py", "extend.py", "finish.py", "generic.py", "node.py", "oblivious.py")


def _source_digest() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in KERNEL_SOURCES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()


def refresh(*modules: ModuleType) -> None:
    """Flush the cache of every numba kernel in ``modules`` when the package source changed."""
    caches = [
        obj._cache
        for module in modules
        for obj in vars(module).values()
        if getattr(obj, "_cache", None) is not None and hasattr(obj._cache, "cache_path")
    ]
    if not caches:
        return
    digest = _source_digest()
    stamp = Path(caches[0].cache_path) / _STAMP
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    for cache in caches:
        cache.flush()
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only cache location: numba itself then compiles in memory
        pass
