"""Episodes and the task-distribution protocol shared by every sampler."""

from __future__ import annotations

import numbers
from typing import NamedTuple, Sequence

import mlx.core as mx

from reptile_fn.errors import ConfigError


class Episode(NamedTuple):
    """One few-shot task (or a batch of them, stacked on a leading task axis).

    Classification: ``support_x`` is (k_shot * n_way, d) with integer labels in ``support_y``;
    ``query_x`` is (query_size * n_way, d). Regression: (k_shot, d) support points and
    (query_size, d) query points with (…, out_dim) float targets.
    """

    support_x: mx.array
    support_y: mx.array
    query_x: mx.array
    query_y: mx.array


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """A ConfigError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_int(name: str, value: object, minimum: int, meaning: str) -> None:
    """A ConfigError naming ``name`` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum} ({meaning}), got {value!r}")
