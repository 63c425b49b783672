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


def test_the_kernel_family_follows_the_cpus_flags():
    from reptile_fn._blas import core_type

    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert core_type(avx512 | {"avx2", "fma", "sse3"}) == "SkylakeX"
    assert core_type({"avx512f", "avx2", "fma"}) == "Haswell"  # Knights Landing's AVX-512 lacks BW/DQ/VL
    assert core_type({"avx2", "fma", "avx"}) == "Haswell"
    assert core_type({"avx", "sse4_2"}) is None and core_type(set()) is None


@pytest.mark.skipif(not HAVE_OPENBLAS, reason="libopenblas.so.0 is not installed")
def test_openblas_runs_the_kernels_the_cpu_allows_unless_told_otherwise():
    """An OpenBLAS older than the CPU falls back to generic SSE3 kernels ("Prescott"), 3x slower; reptile_fn names the
    kernels the flags allow before loading it, and a user's own OPENBLAS_CORETYPE stands."""
    from reptile_fn._blas import core_type, cpu_flags

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    out = subprocess.run([sys.executable, "-c", "import reptile_fn, mlx.core; print(reptile_fn.blas_status())"],
                         capture_output=True, text=True, env=env, check=True).stdout
    expected = core_type(cpu_flags()) if os.uname().machine == "x86_64" else None
    if expected is None:
        pytest.skip("no AVX2 or AVX-512 to choose kernels for")
    assert f"{expected} kernels" in out, out
    assert "Prescott kernels" in status("import reptile_fn, mlx.core", OPENBLAS_CORETYPE="Prescott")
