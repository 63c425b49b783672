"""reptile_fn: functional meta-learning (Reptile, MAML and kin) on MLX."""

import sys

from reptile_fn import _blas, _malloc

try:
    _blas.load()  # must run before the first `import mlx.core` (see _blas.py)
    _malloc.tune()  # keep freed buffers for reuse instead of page-faulting them in anew (see _malloc.py)
except KeyboardInterrupt:  # loading BLAS takes ~0.1 s: a Ctrl-C to the console script then is one line too
    if sys.argv and sys.argv[0].rsplit("/", 1)[-1] != "reptile-fn":
        raise
    sys.stderr.write("error: stopped by Ctrl-C (SIGINT) while starting; nothing was done\n")
    raise SystemExit(130) from None

__version__ = "0.1.0"


def blas_status() -> str:
    """A one-line description of the BLAS MLX's CPU matmuls run on (e.g. "OpenBLAS (libopenblas.so.0)")."""
    return _blas.status()

