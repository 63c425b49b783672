"""reptile_fn: functional meta-learning (Reptile, MAML and kin) on MLX."""

from reptile_fn import _blas, _malloc

_blas.load()  # must run before the first `import mlx.core` (see _blas.py)
_malloc.tune()  # keep freed buffers for reuse instead of page-faulting them in anew (see _malloc.py)

__version__ = "0.1.0"


def blas_status() -> str:
    """A one-line description of the BLAS MLX's CPU matmuls run on (e.g. "OpenBLAS (libopenblas.so.0)")."""
    return _blas.status()

