"""Frozen-encoder baselines for few-shot text classification, on cached sentence embeddings.

With the encoder frozen, an episode's sentences are embedded once (``embed_episodes``) and every
baseline works on those embeddings, never running the encoder again:

- ``prototype_accuracy``: each query sentence gets the class whose support mean (prototype) is
  nearest in cosine similarity (Snell et al. 2017 with cosine; no training): the bar practitioners use.
- ``head_curves``: a linear head (zero-initialised) trained on the support embeddings by the
  library's inner loop (``evaluate.per_episode_curves``), scored on the query set after 0..K steps.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from reptile_fn.episode import Episode
from reptile_fn.evaluate import per_episode_curves
from reptile_fn.inner import InnerLoop
from reptile_fn.losses import accuracy, cross_entropy
from reptile_fn.models import dense
from reptile_fn.text.batching import trim
from reptile_fn.text.encoder import EncoderConfig, encode
from reptile_fn.tree import Tree


def embed_episodes(params: Tree, config: EncoderConfig, episodes: Episode, *, normalize: bool = True,
                   chunk: int = 256) -> Episode:
    """The same episodes with each (2, L) token input replaced by its sentence embedding (H,)."""
    run = mx.compile(lambda x: encode(params, config, x[:, 0], x[:, 1], normalize=normalize))

    def embed(x: mx.array) -> mx.array:
        flat = x.reshape(-1, *x.shape[-2:])
        parts = []
        for i in range(0, flat.shape[0], chunk):
            parts.append(run(flat[i:i + chunk]))
            mx.eval(parts[-1])
        return mx.concatenate(parts).reshape(*x.shape[:-2], -1)

    return Episode(embed(episodes.support_x), episodes.support_y, embed(episodes.query_x), episodes.query_y)


def embed_classes(params: Tree, config: EncoderConfig, x: mx.array, counts: mx.array, *, normalize: bool = True,
                  chunk: int = 256) -> mx.array:
    """Class arrays (n_classes, n_max, 2, L) -> (n_classes, n_max, H), every real sentence embedded once.

    Rows past a class's count stay zero (never sampled). ``tasks.text.sample_episodes`` on the result
    with the same counts and key gives ``embed_episodes`` of the token episodes, without embedding a
    sentence twice across episodes.
    """
    run = mx.compile(lambda t: encode(params, config, t[:, 0], t[:, 1], normalize=normalize))
    n_classes, n_max = x.shape[:2]
    rows = np.flatnonzero(np.arange(n_max)[None, :] < np.array(counts)[:, None])  # real sentences, flat index
    flat = x.reshape(n_classes * n_max, *x.shape[2:])
    # shortest first, each chunk cut to its own longest sentence (padding is masked: the same embeddings)
    rows = rows[np.argsort(np.array(flat[mx.array(rows), 1].sum(-1)), kind="stable")]
    parts = []
    for i in range(0, len(rows), chunk):
        parts.append(run(trim(flat[mx.array(rows[i:i + chunk])])))
        mx.eval(parts[-1])
    embedded = mx.concatenate(parts)
    out = mx.zeros((n_classes * n_max, embedded.shape[-1]), dtype=embedded.dtype)
    out[mx.array(rows)] = embedded
    return out.reshape(n_classes, n_max, -1)


def prototype_accuracy(embedded: Episode, n_way: int) -> np.ndarray:
    """Per-episode query accuracy of the nearest cosine prototype (class mean of support embeddings)."""
    onehot = (embedded.support_y[..., None] == mx.arange(n_way)).astype(embedded.support_x.dtype)  # (T, n, N)
    sums = mx.swapaxes(onehot, 1, 2) @ embedded.support_x  # (T, N, H)
    protos = sums / mx.maximum(mx.linalg.norm(sums, axis=-1, keepdims=True), 1e-12)
    q = embedded.query_x / mx.maximum(mx.linalg.norm(embedded.query_x, axis=-1, keepdims=True), 1e-12)
    pred = mx.argmax(q @ mx.swapaxes(protos, 1, 2), axis=-1)  # (T, m)
    return np.array(mx.mean(pred == embedded.query_y, axis=-1))


def head_curves(embedded: Episode, n_way: int, *, lr: float, steps: int, optimizer: str = "sgd",
                record: list[int] | None = None) -> dict[str, np.ndarray]:
    """Per-episode query loss and accuracy of a zero-initialised linear head trained on the embeddings."""
    h = embedded.support_x.shape[-1]
    head = {"head": {"w": mx.zeros((h, n_way)), "b": mx.zeros((n_way,))}}
    loop = InnerLoop(lr=lr, steps=steps, optimizer=optimizer)
    return per_episode_curves(loop, lambda p, z: dense(p["head"], z), cross_entropy, head, embedded, metric=accuracy,
                              record=record)
