"""Memory while a model runs, measured as an app sees it.

ExecuTorch's loaders (its Python runtime, and the C++ `Module` its LLM runner and mobile SDKs
use) memory-map the program and data files and `mlock` the mappings, ignoring failure. In an
app the lock fails (no CAP_IPC_LOCK; Android's RLIMIT_MEMLOCK is 64 KiB), so only the pages a
run touches become resident: an embedding table costs the rows looked up. Run as root, the
lock succeeds and pins every mapped byte, which no phone would see. A run step calls
`run_as_an_app` first, for ours and the peers alike, and reads `rss_bytes` once its runtime
is imported and before the model loads: the peak minus that is the model's own memory,
apart from the interpreter's (Python, torch and the runtime's bindings: about 0.4 GB).
"""

from __future__ import annotations

import ctypes
import os

CAP_IPC_LOCK = 14
_CAPABILITY_V3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Sets(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def run_as_an_app() -> None:
    """Drop CAP_IPC_LOCK from this process (and its children): `mlock` beyond RLIMIT_MEMLOCK now fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, sets = _Header(_CAPABILITY_V3, 0), (_Sets * 2)()
    if libc.capget(ctypes.byref(header), sets) != 0:
        raise OSError(ctypes.get_errno(), f"capget: {os.strerror(ctypes.get_errno())}")
    for part in sets:
        for name in ("effective", "permitted", "inheritable"):
            setattr(part, name, getattr(part, name) & ~(1 << CAP_IPC_LOCK))
    if libc.capset(ctypes.byref(header), sets) != 0:
        raise OSError(ctypes.get_errno(), f"capset: {os.strerror(ctypes.get_errno())}")


def rss_bytes() -> int:
    """This process's resident set now (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmRSS line")
