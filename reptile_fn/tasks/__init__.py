"""Episode samplers: task families (sine, linear, xor, circles, spiral) and their distribution, Omniglot
(``tasks.omniglot``) and intent classification (``tasks.text``).

``DATASETS`` names every data set a config's ``tasks.dataset`` can choose, with the model it takes
(``run.build`` builds them); a new data set is one module here and one entry there."""

from reptile_fn.episode import Episode
from reptile_fn.tasks.distribution import (
    FAMILIES,
    TaskDistribution,
    TaskFamily,
    Tasks,
    make_distribution,
)
from reptile_fn.tasks.sine import sine_curve

DATASETS = {"synthetic": "mlp", "omniglot": "conv4", "clinc150": "text", "images": "conv4", "csv": "text"}

__all__ = [
    "DATASETS",
    "Episode",
    "FAMILIES",
    "TaskDistribution",
    "TaskFamily",
    "Tasks",
    "make_distribution",
    "sine_curve",
]
