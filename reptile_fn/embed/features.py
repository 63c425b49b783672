"""Handcrafted task features: statistics of a support set that need no model.

Every feature is a symmetric function of the support examples, so the vector does not depend on
their order. For a classification support set ``x`` (n, ...) with integer labels ``y`` (n,):

- size: log(1 + n); classes: the number of distinct labels; balance: entropy of the label
  frequencies over log(classes) (1 = balanced);
- input statistics: for inputs of at most 16 dimensions the square roots of the covariance's
  eigenvalues (ascending; invariant to rotating and shifting the inputs, which every 2-D family
  draws at random), for images the overall mean, standard deviation and mean per-pixel std;
- class geometry: distance between the two farthest class means over the mean within-class
  spread, and log(max/min) of the per-class spreads (a disc inside a ring: circles);
- complexity: support accuracy of ridge least-squares fits to one-hot labels on [x, 1] (linear)
  and, for ≤ 16 dimensions, on [z, z_i z_j, 1] with z the standardised inputs (quadratic), and
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

    if flat.shape[1] <= 16:  # rotation-invariant: the spectrum of the input covariance, not per-axis moments
        centred = flat - flat.mean(0)
        cov = centred.T @ centred / n
        stats = [mx.sqrt(mx.maximum(mx.linalg.eigvalsh(cov, stream=mx.cpu), 0.0))]
    else:  # images: a few global statistics, not one per pixel
        stats = [flat.mean()[None], flat.std()[None], flat.std(0).mean()[None]]

    means = (onehot.T @ flat) / mx.maximum(counts, 1.0)[:, None]  # (C, D)
    radius = mx.sqrt(mx.sum((flat - onehot @ means) ** 2, axis=1))
    spread = radius.mean()
    class_spread = mx.log((onehot.T @ radius) / mx.maximum(counts, 1.0) + 1e-6)
    spread_ratio = mx.max(mx.where(present > 0, class_spread, -1e9)) - mx.min(mx.where(present > 0, class_spread, 1e9))
    gaps = mx.sqrt(mx.sum((means[:, None] - means[None]) ** 2, axis=-1))
    gaps = gaps * present[:, None] * present[None, :]
    separation = gaps.max() / (spread + 1e-6)

    linear_acc = _ridge_accuracy(flat, onehot, y)
    if flat.shape[1] <= 16:  # quadratic boundaries (circles, xor) separate from linear and from neither (spirals)
        centred = (flat - flat.mean(0)) / (flat.std(0) + 1e-6)
        i, j = _triu(flat.shape[1])
        quadratic_acc = _ridge_accuracy(mx.concatenate([centred, centred[:, i] * centred[:, j]], axis=1), onehot, y)
    else:
        quadratic_acc = linear_acc

    # leave-one-out 1-NN label agreement
    d2 = mx.sum((flat[:, None] - flat[None]) ** 2, axis=-1) + mx.eye(n) * 1e30
    nn_acc = mx.mean((y[mx.argmin(d2, axis=1)] == y).astype(mx.float32))

    scalars = mx.stack([mx.log1p(mx.array(float(n))), n_present, balance, separation, spread_ratio,
                        linear_acc, quadratic_acc, nn_acc])
    return mx.concatenate([scalars, *stats]).astype(mx.float32)


def _triu(d: int) -> tuple[mx.array, mx.array]:
    pairs = [(a, b) for a in range(d) for b in range(a, d)]
    return mx.array([a for a, _ in pairs]), mx.array([b for _, b in pairs])


def _ridge_accuracy(features: mx.array, onehot: mx.array, y: mx.array) -> mx.array:
    """Support accuracy of ridge least squares on [features, 1] -> one-hot labels."""
    design = mx.concatenate([features, mx.ones((features.shape[0], 1))], axis=1)
    gram = design.T @ design + RIDGE * mx.eye(design.shape[1])
    weights = mx.linalg.solve(gram, design.T @ onehot, stream=mx.cpu)
    return mx.mean((mx.argmax(design @ weights, axis=1) == y).astype(mx.float32))


def handcrafted_batch(x: mx.array, y: mx.array, n_classes: int) -> mx.array:
    """``handcrafted`` of each support set stacked on a leading task axis -> (tasks, d).

    A loop, not ``mx.vmap``: the linear fit's solve has no batching rule in MLX 0.32.
    """
    return mx.stack([handcrafted(x[i], y[i], n_classes) for i in range(x.shape[0])])
