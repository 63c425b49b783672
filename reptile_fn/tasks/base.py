"""Episodes and the task-distribution protocol shared by every sampler."""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx


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
