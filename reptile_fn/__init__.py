"""reptile_fn: functional meta-learning (Reptile, MAML and kin) on MLX."""

import contextlib
import sys

_M = getattr(sys, "orig_argv", [])  # python -m reptile_fn: "-m" then our name (not another package's -m)
_CLI = bool(sys.argv) and (sys.argv[0].rsplit("/", 1)[-1] == "reptile-fn" or sys.argv[0] == "-m" and any(
    a == "-m" and b == "reptile_fn" for a, b in zip(_M, _M[1:])))
try:
    from reptile_fn import signals as _signals

    with _signals.sigterm_as_interrupt() if _CLI else contextlib.nullcontext():
        from reptile_fn import _blas, _malloc

        _blas.load()  # must run before the first `import mlx.core` (see _blas.py)
        _malloc.tune()  # keep freed buffers for reuse instead of page-faulting them in anew (see _malloc.py)
except (KeyboardInterrupt, RuntimeError) as e:  # loading BLAS takes ~0.1 s: a stop of the command line then is one line too
    if not _CLI or not isinstance(e, KeyboardInterrupt) and not isinstance(e.__cause__, KeyboardInterrupt):
        raise  # (Python 3.11 wraps a stop inside a class body's __set_name__ in a RuntimeError)
    e = e if isinstance(e, KeyboardInterrupt) else e.__cause__
    stop = e if hasattr(e, "status") else None  # signals.Terminated (the module may not be imported yet)
    sys.stderr.write(f"error: stopped by {stop.name if stop else 'Ctrl-C (SIGINT)'} while starting; nothing was done\n")
    raise SystemExit(stop.status if stop else 130) from None

__version__ = "0.1.0"


def blas_status() -> str:
    """A one-line description of the BLAS MLX's CPU matmuls run on (e.g. "OpenBLAS (libopenblas.so.0)")."""
    return _blas.status()

