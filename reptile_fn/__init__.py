"""reptile_fn: functional meta-learning (Reptile, MAML and kin) on MLX."""

from reptile_fn import _blas

_blas.load()  # must run before the first `import mlx.core` (see _blas.py)

__version__ = "0.1.0"
