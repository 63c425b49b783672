"""Load the system OpenBLAS before ``mlx.core`` on Linux.

The Linux ``mlx[cpu]`` wheel links the reference BLAS, whose matmuls run tens of times slower.
Loading ``libopenblas.so.0`` with ``RTLD_GLOBAL`` first makes MLX's BLAS calls resolve to it.
Set ``REPTILE_FN_NO_OPENBLAS=1`` to opt out. ``status()`` says which BLAS is in use.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

OPT_OUT_ENV = "REPTILE_FN_NO_OPENBLAS"
CANDIDATES = ("libopenblas.so.0", "libopenblas.so", "libopenblasp-r0.so")
_state = {"loaded": None, "reason": "not attempted"}


def skipped(opt_out_env: str) -> str | None:
    """Why a Linux-only process setting does not apply here (another platform, or opted out), else None."""
    if not sys.platform.startswith("linux"):
        return f"not needed on {sys.platform}"
    if os.environ.get(opt_out_env, "").strip() not in ("", "0"):
        return f"disabled by {opt_out_env}"
    return None


def load() -> None:
    if _state["reason"] != "not attempted":
        return
    if why := skipped(OPT_OUT_ENV):
        _state["reason"] = why
        return
    if "mlx.core" in sys.modules:
        _state["reason"] = "mlx.core was imported before reptile_fn, too late to load OpenBLAS"
        warnings.warn("mlx.core was imported before reptile_fn, so MLX's CPU matmuls may run on the slow reference "
                      "BLAS; import reptile_fn (or any reptile_fn module) first", RuntimeWarning, stacklevel=3)
        return
    for name in CANDIDATES:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _state.update(loaded=name, reason="loaded")
        return
    _state["reason"] = "libopenblas.so.0 not found (Debian/Ubuntu: apt-get install libopenblas0-pthread)"


def status() -> str:
    """A one-line description of the BLAS that MLX's CPU matmuls run on."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    # numpy ships its own OpenBLAS (libscipy_openblas64_, suffixed symbols) that MLX never calls
    mapped = [m for m in _mapped_libraries() if "scipy_openblas" not in m]
    if any("openblas" in m for m in mapped):
        return f"OpenBLAS ({_state['loaded'] or 'loaded by the process'})"
    if any("libblas" in m for m in mapped):
        return f"reference BLAS, slow ({_state['reason']})"
    return f"unknown ({_state['reason']})"


def _mapped_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            return [line.rsplit(" ", 1)[-1].strip() for line in f if ".so" in line]
    except OSError:
        return []
