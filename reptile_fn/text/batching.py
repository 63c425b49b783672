"""How text episodes are batched for adaptation: the evaluation policy for the sentence encoder.

Evaluation (``evaluate.per_episode_curves``'s ``split``) adapts text episodes a few at a time, grouped
by length and cut to it (``trim``), with each support and query set's sentences packed into shared
rows (``encoder.pack``). Padding is masked and a packed sentence attends only to itself, so results
do not change; only the cost does (research/text_packing.json, research/text_profile.json).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from reptile_fn.episode import Episode
from reptile_fn.text import encoder

EVAL_CHUNK = 2
"""Text episodes adapted at once in evaluation (``by_length``): small chunks are cut to a tighter longest
sentence and keep a step's activations in the caches (measured: research/evaluation_chunks.md)."""


def trim(x: mx.array, multiple: int = 4) -> mx.array:
    """Token inputs (..., 2, L) cut to their longest real sentence, rounded up to ``multiple`` tokens.

    Padding is masked everywhere in the encoder (attention keys, mean pooling) and positions count
    from the start, so a sentence's embedding does not change; the cost of a forward pass falls with
    L. One length for the whole array: to gain most, group inputs of similar length first (a batch of
    CLINC150 episodes is padded to 33 tokens, a single episode's longest sentence has ~20).
    """
    longest = int(mx.max(mx.sum(x[..., 1, :], axis=-1)).item())
    return x[..., :min(x.shape[-1], -(-max(longest, 1) // multiple) * multiple)]


def by_length(episodes: Episode, chunk: int = EVAL_CHUNK, *, pack: bool = True):
    """(indices, episodes) in chunks of similar longest sentence, each cut to its own length (``trim``),
    and with ``pack`` the sentences of each support and query set packed into shared rows
    (``encoder.pack``; the model then gets dict inputs, which full-batch inner steps take).

    The ``split`` of ``evaluate.per_episode_curves`` for text. Padding is masked and a packed
    sentence attends only to itself, so results do not change; a chunk of short episodes runs at ~20
    tokens instead of the 33 (CLINC150) or 64 (Banking77) every episode is padded to, and packed it
    costs its real tokens (Banking77: ~16 per sentence against a longest of ~45 per episode).
    """
    longest = np.maximum(np.array(episodes.support_x[..., 1, :].sum(-1).max(-1)),
                         np.array(episodes.query_x[..., 1, :].sum(-1).max(-1)))
    order = np.argsort(longest, kind="stable")
    for i in range(0, len(order), chunk):
        idx = order[i:i + chunk]
        j = mx.array(idx)
        sx, sy, qx, qy = (a[j] for a in episodes)
        sx, qx = trim(sx), trim(qx)
        if pack:
            sx, qx = packed(sx), packed(qx)
        yield idx, type(episodes)(sx, sy, qx, qy)


def packed(x: mx.array) -> dict[str, mx.array]:
    """Token inputs (..., n, 2, L) as ``encoder.pack``'s dict of shared rows."""
    x = np.array(x)
    return {k: mx.array(a) for k, a in encoder.pack(x[..., 0, :], x[..., 1, :]).items()}
