"""Running native parsers on unverified bytes without risking the trading process.

Some model libraries' parsers crash the process (SIGSEGV, abort) on damaged or crafted files
instead of raising: found by fuzzing truncations and byte flips (LightGBM text ~50 crashes in
1,500 cases, XGBoost JSON and UBJ, e.g. a negative node index), and by crafted files that load
and then crash on the first predict (a LightGBM categorical split pointing at category set
10^9, an XGBoost split on feature 5·10^7). Bytes that were not verified against a recorded
checksum or signature are therefore, for formats marked ``crash_probe`` by their adapter:

1. checked in-process by the format's structure check (``FileFormat.check``), which refuses what
   the parser would trust blindly (indices out of range, sizes that disagree), and
2. opened *and predicted on* in a throw-away interpreter (``probe_in_subprocess``): a crash
   there takes down the probe, not this process.

Pickles are never probed: opening one runs its code, in the probe too (they are opened only
after a verified checksum). Keras files are not probed: ``.keras`` is a zip read by Python and
``.h5`` is HDF5 with its own checks, and a probe would cost a TensorFlow import (seconds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

# The child: read the bytes from stdin, open them with the family's format, and predict on a few
# rows (zeros, ones, extremes, NaN), so a crash on the first predict happens here, not later.
_PROBE = """
import sys
import numpy as np
from fastinfer import families
family = families.resolve(sys.argv[1])
fmt = family.file_format(sys.argv[2])
n_features = int(sys.argv[3])
from fastinfer.errors import MalformedFile
try:
    model = fmt.load(sys.stdin.buffer.read())
except MalformedFile as exc:
    sys.exit(str(exc))  # the format check's own reason, worded as in the parent process
rows = np.array([[0.0], [1.0], [-1e30], [1e30], [np.nan]]) * np.ones((1, n_features))
if not family.handles_nan:
    rows = rows[:-1]
family.adapter.predict(model, rows)
"""


def probe_in_subprocess(family, file_name: str, data: bytes, n_features: int, timeout: float = 120.0) -> str | None:
    """Open ``data`` (a ``file_name`` file of ``family``) and predict on it in a throw-away
    interpreter; why that failed (a crash named by its signal, or the error's last line), or None.

    The child gets this process's ``sys.path``, so it imports the same fastinfer.
    """
    fmt = family.file_format(file_name)
    if fmt is None:
        raise ValueError(f"{file_name!r} is not a {family.name} format")
    if fmt.executes_code:
        raise ValueError("pickles are never probed: opening one runs its code")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-c", _PROBE, family.name, file_name, str(int(n_features))]
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"opening it did not finish within {timeout:g} s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"the native library crashed opening it ({signal.Signals(-done.returncode).name})"
    last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
    return f"cannot open: {last[0][:200]}"
