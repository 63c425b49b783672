"""Distances between task embeddings, nearest-neighbour retrieval and family identification."""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np


def cosine_distance(a: mx.array, b: mx.array) -> mx.array:
    """1 − cos(a, b) of two vectors."""
    return 1 - mx.sum(a * b) / (mx.linalg.norm(a) * mx.linalg.norm(b) + 1e-12)


def pairwise(queries: mx.array, keys: mx.array, distance: Callable = cosine_distance) -> mx.array:
    """(q, k) distances between rows of ``queries`` (q, d) and ``keys`` (k, d).

    Cosine is one matrix product; any other distance is vmapped over (q, k) pairs, which holds a
    (q, k, d) intermediate, so large banks should chunk their queries.
    """
    if distance is cosine_distance:
        unit = lambda m: m / (mx.linalg.norm(m, axis=1, keepdims=True) + 1e-12)  # noqa: E731
        return 1 - unit(queries) @ unit(keys).T
    return mx.vmap(lambda a: mx.vmap(lambda b: distance(a, b))(keys))(queries)


def nearest(queries: mx.array, keys: mx.array, distance: Callable = cosine_distance) -> mx.array:
    """Index of the nearest key for each query row (ties: the lowest index)."""
    return mx.argmin(pairwise(queries, keys, distance), axis=1)


def standardize(train: mx.array, *others: mx.array) -> tuple[mx.array, ...]:
    """Scale every column to zero mean and unit variance using ``train``'s statistics."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return tuple((e - mu) / sd for e in (train, *others))


def identification_accuracy(query: mx.array, query_labels, keys: mx.array, key_labels,
                            distance: Callable = cosine_distance) -> float:
    """Top-1 accuracy of naming a query task's family by its nearest key task's family."""
    idx = np.array(nearest(query, keys, distance))
    return float(np.mean(np.asarray(key_labels)[idx] == np.asarray(query_labels)))
