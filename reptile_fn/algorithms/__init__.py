"""Meta-learning algorithms. Each ``make_step(...)`` returns a ``MetaStep(init, step)``."""

from reptile_fn.algorithms import reptile
from reptile_fn.algorithms.base import MetaStep

ALGORITHMS = {"reptile": reptile.make_step}

__all__ = ["ALGORITHMS", "MetaStep", "reptile"]
