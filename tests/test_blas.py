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


def test_the_wheels_openblas_serves_mlx_without_the_system_one(tmp_path):
    """REPTILE_FN_BLAS=wheel: scipy-openblas32's library, its symbol prefix stripped once into the cache, runs MLX's
    matmuls and LAPACK; the second import reuses the cached copy."""
    code = ("import reptile_fn, mlx.core as mx, numpy as np\n"
            "a = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)\n"
            "x = mx.array(a)\n"
            "assert np.allclose(np.array(x @ x), a @ a, atol=1e-4)\n"
            "assert np.allclose(np.array(mx.linalg.inv(x, stream=mx.cpu) @ x), np.eye(64), atol=1e-3)\n")
    env = {"REPTILE_FN_BLAS": "wheel", "REPTILE_FN_CACHE": str(tmp_path)}
    first = status(code, **env)
    assert first.startswith("OpenBLAS (scipy-openblas32 wheel"), first
    (made,) = tmp_path.glob("libopenblas-scipy32-*.so")
    before = made.stat().st_mtime_ns
    assert status(code, **env) == first and made.stat().st_mtime_ns == before


def test_a_cache_file_someone_else_could_write_is_not_loaded(tmp_path):
    env = {"REPTILE_FN_BLAS": "wheel", "REPTILE_FN_CACHE": str(tmp_path)}
    status("import reptile_fn", **env)
    (made,) = tmp_path.glob("libopenblas-scipy32-*.so")
    made.chmod(0o666)
    out = status("import reptile_fn, mlx.core", **env)
    assert out.startswith("reference BLAS") and "not this user's own file" in out
