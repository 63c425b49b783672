"""Episode samplers: task families (sine, linear, xor, circles, spiral) and their distribution."""

from reptile_fn.tasks.base import Episode
from reptile_fn.tasks.distribution import (
    FAMILIES,
    TaskDistribution,
    TaskFamily,
    Tasks,
    make_distribution,
)
from reptile_fn.tasks.sine import sine_curve

__all__ = [
    "Episode",
    "FAMILIES",
    "TaskDistribution",
    "TaskFamily",
    "Tasks",
    "make_distribution",
    "sine_curve",
]
