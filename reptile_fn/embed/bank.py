"""An adapter bank: parameter trees adapted to stored tasks, retrieved by task embedding.

Built from training-pool tasks: for each stored task i the meta-learned init θ is adapted on that
task's data, θ_i = adapt(θ; x_i, y_i), and the task is embedded, e_i. A new task with embedding e
starts from the stored tree of its nearest neighbour,

    select(bank, e) = θ_j,   j = argmin_i d((e − μ) / σ, ē_i),   ē_i = (e_i − μ) / σ

where μ, σ standardise every embedding coordinate with the bank's own statistics (identity when
built with ``standardize=False``) and d is the cosine distance unless another is given.

The bank is a NamedTuple of arrays: trees stacked on a leading entry axis, no hidden state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from reptile_fn import checkpoint
from reptile_fn.embed.select import cosine_distance, nearest
from reptile_fn.errors import CheckpointError, EmbeddingError
from reptile_fn.inner import InnerLoop, adapt
from reptile_fn.tree import Tree


class AdapterBank(NamedTuple):
    params: Tree  # every leaf (entries, ...): the adapted trees, stacked
    embeddings: mx.array  # (entries, d), already standardised with shift / scale
    labels: mx.array  # (entries,) int32: e.g. the stored task's family id (-1: unknown)
    shift: mx.array  # (d,) μ subtracted from a query embedding before comparing
    scale: mx.array  # (d,) σ dividing it


def from_entries(params: Tree, embeddings: mx.array, labels: mx.array | None = None, *,
                 standardize: bool = True) -> AdapterBank:
    """A bank of already adapted trees (stacked on axis 0) keyed by raw ``embeddings`` (entries, d)."""
    embeddings = mx.array(embeddings).astype(mx.float32)
    if embeddings.ndim != 2:
        raise EmbeddingError(f"bank embeddings must be a matrix (entries, d), got shape {embeddings.shape}; "
                             "stack one embedding per stored task")
    n, d = embeddings.shape
    counts = {v.shape[0] if v.ndim else None for _, v in tree_flatten(params)}
    if counts != {n}:
        raise EmbeddingError(f"{n} embeddings but parameter leaves stacked on {sorted(counts, key=str)} entries; "
                             "stack exactly one adapted tree per embedding on axis 0")
    if standardize and n > 1:
        shift, scale = embeddings.mean(0), embeddings.std(0) + 1e-6
    else:
        shift, scale = mx.zeros((d,)), mx.ones((d,))
    labels = mx.full((n,), -1, dtype=mx.int32) if labels is None else mx.array(labels).astype(mx.int32)
    return AdapterBank(params, (embeddings - shift) / scale, labels, shift, scale)


def build(apply: Callable, loss: Callable, init: Tree, x: mx.array, y: mx.array, embeddings: mx.array,
          labels: mx.array | None = None, *, inner_lr: float, steps: int, standardize: bool = True,
          **loop_options) -> AdapterBank:
    """Adapt ``init`` on each stored task's data (x (entries, n, ...), y (entries, n)), vmapped over tasks.

    θ_i = θ − α Σ_t ∇L(θ_t; x_i, y_i) for ``steps`` steps (``inner.adapt``; other ``InnerLoop`` fields
    as keywords).
    """
    loop = InnerLoop(lr=inner_lr, steps=steps, **loop_options)

    def one(xi, yi):
        return adapt(loop, apply, loss, init, (xi, yi)).params

    adapted = mx.vmap(one)(x, y)
    mx.eval(adapted)
    return from_entries(adapted, embeddings, labels, standardize=standardize)


def size(bank: AdapterBank) -> int:
    return int(bank.embeddings.shape[0])


def select_index(bank: AdapterBank, embeddings: mx.array, distance: Callable = cosine_distance) -> mx.array:
    """Index of the nearest entry for one embedding (d,) -> scalar, or for each row of (q, d) -> (q,)."""
    embeddings = mx.array(embeddings)
    if embeddings.ndim not in (1, 2) or embeddings.shape[-1] != bank.embeddings.shape[1]:
        raise EmbeddingError(f"query embedding of shape {embeddings.shape} does not match the bank's "
                             f"{bank.embeddings.shape[1]}-dimensional keys; embed the task the way the bank was built")
    queries = ((embeddings.astype(mx.float32) - bank.shift) / bank.scale).reshape(-1, bank.embeddings.shape[1])
    # cosine is one matrix product inside pairwise; other distances hold (rows, entries, d): ~64 MB per call
    rows = queries.shape[0] if distance is cosine_distance else max(1, 2**24 // max(1, bank.embeddings.size))
    idx = mx.concatenate([nearest(queries[i:i + rows], bank.embeddings, distance)
                          for i in range(0, queries.shape[0], rows)])
    return idx[0] if embeddings.ndim == 1 else idx


def select(bank: AdapterBank, embedding: mx.array, distance: Callable = cosine_distance) -> Tree:
    """The stored tree whose embedding is nearest: one tree for (d,), trees stacked on axis 0 for (q, d)."""
    idx = select_index(bank, embedding, distance)
    return tree_map(lambda a: a[idx], bank.params)


def save(path: str | Path, bank: AdapterBank) -> Path:
    """Write the bank atomically to one safetensors file (``checkpoint.save``: trees under ``params.``)."""
    keys = {"embeddings": bank.embeddings, "labels": bank.labels, "shift": bank.shift, "scale": bank.scale}
    return checkpoint.save(path, bank.params, keys, {"kind": "adapter_bank"})


def load(path: str | Path) -> AdapterBank:
    """Read a bank written by ``save``."""
    try:
        arrays, _ = checkpoint.load(path)
    except CheckpointError as e:
        if not Path(path).is_file():
            raise
        raise CheckpointError(f"{path} is not an adapter bank ({e}); write banks with embed.bank.save") from None
    missing = [k for k in ("embeddings", "labels", "shift", "scale") if f"state.{k}" not in arrays]
    leaves = [(k[len("params."):], v) for k, v in arrays.items() if k.startswith("params.")]
    if missing or not leaves:
        raise CheckpointError(f"{path} is not an adapter bank (missing {missing or ['params.*']}); "
                              "write banks with embed.bank.save")
    return AdapterBank(tree_unflatten(leaves), *(arrays[f"state.{k}"] for k in ("embeddings", "labels", "shift", "scale")))
