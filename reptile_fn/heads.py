"""Heads built from a task's support set, and the pair objective of SetFit-style adaptation.

Every model here ends in a linear head at a known path (``"head"``; a PEFT run's ``"base.head"``),
``logits = z @ w + b`` over features ``z``. Two things follow from that alone, for any such model:

- ``features(apply, head)``: ``z`` itself, by applying the model with the head replaced by the
  identity (``w = I``, ``b = 0``). No second forward function per model.
- ``prototype_head(apply, head, scale)``: the head of Proto-MAML (Triantafillou et al., ICLR 2020,
  Meta-Dataset), rebuilt from the support set: with class means ``c_k`` of the support features,
  ``w_k = 2·s·c_k`` and ``b_k = −s·‖c_k‖²``, so ``logit_k = s·(‖z‖² − ‖z − c_k‖²)``: the prototype
  classifier (nearest class mean, squared Euclidean), as a linear head that fine-tuning starts from
  instead of chance. ``s`` (``scale``) is a temperature: with L2-normalised features the distances lie
  in [0, 4], and ``s`` sets how confident the start is (and so how large the first gradients are).

A head built this way is a ``HeadInit``, ``(params, (support_x, support_y)) -> params``: the inner loop
applies it before its first step (``inner.InnerLoop.head_init``), so training, evaluation and every
algorithm rebuild the head in every task. It is differentiable: second-order MAML differentiates
through the prototypes (Proto-MAML proper); Reptile and FOMAML do not differentiate the inner loop.

``pair_loss`` is SetFit's objective (Tunstall et al., 2022): the cosine similarity of every pair of
support sentences regressed onto 1 (same class) or 0 (different classes).
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from reptile_fn.tree import Tree

HeadInit = Callable[[Tree, tuple], Tree]


def get(params: Tree, path: str) -> Tree:
    """The subtree at a dotted ``path`` (e.g. ``"base.head"``)."""
    for part in path.split("."):
        if not isinstance(params, dict) or part not in params:
            raise KeyError(f"no {path!r} in the parameters (a model with a linear head at {path!r} is needed)")
        params = params[part]
    return params


def replace(params: Tree, path: str, subtree: Tree) -> Tree:
    """``params`` with the subtree at ``path`` replaced (a new tree; nothing is mutated)."""
    first, _, rest = path.partition(".")
    get(params, path)  # the path must exist
    return {**params, first: replace(params[first], rest, subtree) if rest else subtree}


def features(apply: Callable, head: str = "head") -> Callable[[Tree, mx.array], mx.array]:
    """``(params, x) -> z``: the features the head at ``head`` reads (the model with an identity head)."""

    def feats(params: Tree, x) -> mx.array:
        w = get(params, head)["w"]
        d = w.shape[0]
        return apply(replace(params, head, {"w": mx.eye(d, dtype=w.dtype), "b": mx.zeros((d,), dtype=w.dtype)}), x)

    return feats


def class_means(z: mx.array, y: mx.array, n_classes: int) -> mx.array:
    """(n_classes, d) mean feature of each class in ``(z, y)``; zero for a class without examples."""
    onehot = (y.astype(mx.int32)[:, None] == mx.arange(n_classes)[None, :]).astype(z.dtype)
    counts = mx.maximum(onehot.sum(axis=0), 1)
    return (onehot.T @ z) / counts[:, None]


def prototype_head(apply: Callable, head: str = "head", scale: float = 1.0) -> HeadInit:
    """A ``HeadInit`` setting the head at ``head`` to the prototype classifier of the support set (module doc).

    The head keeps its shape: ``w`` (d, n_classes); a class with no support example gets ``w_k = 0, b_k = 0``.
    """
    feats = features(apply, head)

    def init(params: Tree, support: tuple) -> Tree:
        x, y = support
        n_classes = get(params, head)["w"].shape[1]
        c = class_means(feats(params, x), y, n_classes)
        return replace(params, head, {"w": (2.0 * scale) * c.T, "b": -scale * mx.sum(c * c, axis=-1)})

    return init


def pair_loss(z: mx.array, y: mx.array) -> mx.array:
    """SetFit's objective over all pairs i < j of a support set: mean (cos(z_i, z_j) − [y_i = y_j])²."""
    u = z * mx.rsqrt(mx.maximum(mx.sum(z * z, axis=-1, keepdims=True), 1e-12))
    cos = u @ u.T
    same = (y[:, None] == y[None, :]).astype(cos.dtype)
    n = z.shape[0]
    upper = mx.triu(mx.ones((n, n), dtype=cos.dtype), k=1)
    return mx.sum(upper * (cos - same) ** 2) / mx.maximum(mx.sum(upper), 1)
