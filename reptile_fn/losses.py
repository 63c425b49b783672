"""Losses and metrics: ``(predictions_or_logits, targets) -> scalar``."""

from __future__ import annotations

import mlx.core as mx


def mse(pred: mx.array, target: mx.array) -> mx.array:
    """Mean squared error, averaged over every element."""
    return mx.mean(mx.square(pred - target))


def cross_entropy(logits: mx.array, labels: mx.array) -> mx.array:
    """Mean softmax cross-entropy; ``labels`` are integer class indices."""
    logz = mx.logsumexp(logits, axis=-1)
    picked = mx.take_along_axis(logits, labels[..., None].astype(mx.int32), axis=-1)[..., 0]
    return mx.mean(logz - picked)


def accuracy(logits: mx.array, labels: mx.array) -> mx.array:
    """Fraction of rows whose arg-max equals the label."""
    return mx.mean((mx.argmax(logits, axis=-1) == labels).astype(mx.float32))

