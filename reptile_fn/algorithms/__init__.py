"""Meta-learning algorithms. Each ``make_step(apply, loss, inner, outer, **options)`` returns a
``MetaStep(init, step, inner)``; a new algorithm is one module here and one line in ``ALGORITHMS``."""

from reptile_fn.algorithms import maml, reptile
from reptile_fn.algorithms.base import LOCAL, MetaStep, Reduce

ALGORITHMS = {
    "reptile": reptile.make_step,
    "maml": maml.make_step,
    "fomaml": maml.fomaml,
    "metasgd": maml.metasgd,
    "anil": maml.anil,
}
# What `outer_lr: null` / `outer_optimizer: null` in a config resolve to.
DEFAULTS = {"reptile": reptile.DEFAULTS, **{name: maml.DEFAULTS for name in ("maml", "fomaml", "metasgd", "anil")}}

__all__ = ["ALGORITHMS", "DEFAULTS", "LOCAL", "MetaStep", "Reduce", "maml", "reptile"]
