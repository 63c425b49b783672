"""OpenBLAS is loaded before mlx.core on Linux, and `info` tells the truth about it."""

import ctypes.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the OpenBLAS preload is Linux-only")
HAVE_OPENBLAS = any(os.path.exists(p) for p in ("/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
                                                 "/usr/lib/aarch64-linux-gnu/libopenblas.so.0")) or bool(
    ctypes.util.find_library("openblas"))


def status(code: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code + "\nfrom reptile_fn import _blas; print(_blas.status())"],
                         capture_output=True, text=True, env={**os.environ, **env}, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not HAVE_OPENBLAS, reason="libopenblas.so.0 is not installed")
def test_openblas_is_loaded_when_reptile_fn_comes_first():
    assert status("import reptile_fn, mlx.core").startswith("OpenBLAS")


def test_opt_out_and_late_import_are_reported_as_reference_blas():
    assert "disabled by REPTILE_FN_NO_OPENBLAS" in status("import reptile_fn, mlx.core", REPTILE_FN_NO_OPENBLAS="1")
    # numpy's own bundled OpenBLAS must not be mistaken for the one MLX calls
    late = status("import numpy, mlx.core, reptile_fn")
    assert late.startswith("reference BLAS") and "too late" in late
