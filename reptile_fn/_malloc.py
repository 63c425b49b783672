"""Keep freed memory inside the process on Linux (glibc), so MLX's CPU buffers are reused.

MLX's CPU allocator takes every buffer from ``malloc`` and gives it back with ``free``. glibc serves
large requests (over 128 KiB, a threshold it then raises as it sees frees) with a fresh ``mmap``
and returns them to the kernel on ``free``, and it trims the heap's free top; so each inner step
that allocates the same large activations page-faults them in again, zero-filled by the kernel.
On an Omniglot 20-way evaluation that was 3.3 million page faults in 15 s, half the time in the
kernel. ``tune()`` calls ``mallopt`` so that freed memory stays for the next request: no ``mmap``
for large blocks (``M_MMAP_MAX = 0``), no trimming below 2 GiB of free heap
(``M_TRIM_THRESHOLD``), and the heap grown 64 MiB at a time (``M_TOP_PAD``). The process's
resident memory then stays near its peak instead of falling back between steps. Set
``REPTILE_FN_NO_MALLOC_TUNING=1`` to opt out. ``status()`` says what ran.
"""

from __future__ import annotations

import ctypes

from reptile_fn import _blas

OPT_OUT_ENV = "REPTILE_FN_NO_MALLOC_TUNING"
# glibc <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))
_state = {"reason": "not attempted"}


def tune() -> None:
    if _state["reason"] != "not attempted":
        return
    if why := _blas.skipped(OPT_OUT_ENV):
        _state["reason"] = f"system defaults ({why})"
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        _state["reason"] = "defaults (no mallopt: not glibc)"
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if all(mallopt(param, value) == 1 for param, value in SETTINGS):
        _state["reason"] = "glibc, freed memory kept for reuse (mallopt: no mmap, no trim)"
    else:
        _state["reason"] = "glibc defaults (mallopt refused a setting)"


def status() -> str:
    """A one-line description of how freed CPU memory is handled."""
    return _state["reason"]
