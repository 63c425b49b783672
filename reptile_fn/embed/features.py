"""Handcrafted task features: statistics of a support set that need no model.

Every feature is a symmetric function of the support examples, so the vector does not depend on
their order. For a classification support set ``x`` (n, ...) with integer labels ``y`` (n,):

- size: log(1 + n); classes: the number of distinct labels; balance: entropy of the label
  frequencies over log(classes) (1 = balanced);
- input statistics: per-dimension mean and standard deviation of the flattened inputs (for images,
  their overall mean, standard deviation and the mean per-pixel standard deviation instead);
- class geometry: distance between the two farthest class means over the mean within-class spread;
- complexity: support accuracy of a ridge least-squares linear fit to one-hot labels, and
  leave-one-out 1-nearest-neighbour label agreement (how separable / how local the labelling is).
"""

from __future__ import annotations

import mlx.core as mx

RIDGE = 1e-3


def handcrafted(x: mx.array, y: mx.array, n_classes: int) -> mx.array:
    """The feature vector of one support set: (x (n, ...), integer y (n,)) -> float32 (d,)."""
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(mx.float32)
    onehot = (y[:, None] == mx.arange(n_classes)[None, :]).astype(mx.float32)  # (n, C)
    counts = onehot.sum(0)
    present = (counts > 0).astype(mx.float32)
    n_present = present.sum()
    p = counts / n
    entropy = -mx.sum(mx.where(p > 0, p * mx.log(mx.maximum(p, 1e-12)), 0.0))
    balance = mx.where(n_present > 1, entropy / mx.log(mx.maximum(n_present, 2.0)), 1.0)

    if flat.shape[1] <= 16:
        stats = [flat.mean(0), flat.std(0)]
    else:  # images: a few global statistics, not one per pixel
        stats = [flat.mean()[None], flat.std()[None], flat.std(0).mean()[None]]

    means = (onehot.T @ flat) / mx.maximum(counts, 1.0)[:, None]  # (C, D)
    spread = mx.sqrt(mx.sum((flat - onehot @ means) ** 2, axis=1)).mean()
    gaps = mx.sqrt(mx.sum((means[:, None] - means[None]) ** 2, axis=-1))
    gaps = gaps * present[:, None] * present[None, :]
    separation = gaps.max() / (spread + 1e-6)

    # ridge least squares on [x, 1] -> one-hot labels, scored on the support set itself
    design = mx.concatenate([flat, mx.ones((n, 1))], axis=1)
    gram = design.T @ design + RIDGE * mx.eye(design.shape[1])
    weights = mx.linalg.solve(gram, design.T @ onehot, stream=mx.cpu)
    linear_acc = mx.mean((mx.argmax(design @ weights, axis=1) == y).astype(mx.float32))

    # leave-one-out 1-NN label agreement
    d2 = mx.sum((flat[:, None] - flat[None]) ** 2, axis=-1) + mx.eye(n) * 1e30
    nn_acc = mx.mean((y[mx.argmin(d2, axis=1)] == y).astype(mx.float32))

    scalars = mx.stack([mx.log1p(mx.array(float(n))), n_present, balance, separation, linear_acc, nn_acc])
    return mx.concatenate([scalars, *stats]).astype(mx.float32)


def handcrafted_batch(x: mx.array, y: mx.array, n_classes: int) -> mx.array:
    """``handcrafted`` of each support set stacked on a leading task axis -> (tasks, d).

    A loop, not ``mx.vmap``: the linear fit's solve has no batching rule in MLX 0.32.
    """
    return mx.stack([handcrafted(x[i], y[i], n_classes) for i in range(x.shape[0])])
