"""Losses and metrics: ``(predictions_or_logits, targets) -> scalar``."""

from __future__ import annotations

import mlx.core as mx


def mse(pred: mx.array, target: mx.array) -> mx.array:
    """Mean squared error, averaged over every element; ``pred`` and ``target`` of one shape."""
    if pred.shape != target.shape:  # (n, 1) against (n,) would broadcast to (n, n) and fit the mean
        raise ValueError(f"mse: predictions of shape {pred.shape} and targets of shape {target.shape}; give targets "
                         "shaped as the model's output (e.g. y[:, None] for a (n, 1) output)")
    return mx.mean(mx.square(pred - target))


def _check_labels(name: str, logits: mx.array, labels: mx.array) -> None:
    """Static checks (shapes and dtypes, so they hold under ``mx.vmap`` and ``mx.compile`` too)."""
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"{name}: labels of shape {labels.shape} for logits of shape {logits.shape}; give one integer "
                         "class index per row (one-hot labels: labels.argmax(-1))")
    if not mx.issubdtype(labels.dtype, mx.integer):
        raise TypeError(f"{name}: labels of dtype {labels.dtype}; give integer class indices (labels.astype(mx.int32))")


def cross_entropy(logits: mx.array, labels: mx.array) -> mx.array:
    """Mean softmax cross-entropy; ``labels`` are integer class indices, 0 <= label < logits.shape[-1].

    A label outside that range makes the loss NaN (which training reports as divergence): it used to read past the
    end of the logits, giving a plausible-looking or absurd loss, or a crash.
    """
    _check_labels("cross_entropy", logits, labels)
    n = logits.shape[-1]
    logz = mx.logsumexp(logits, axis=-1)
    picked = mx.take_along_axis(logits, mx.clip(labels, 0, n - 1).astype(mx.int32)[..., None], axis=-1)[..., 0]
    return mx.mean(mx.where((labels >= 0) & (labels < n), logz - picked, mx.nan))


def accuracy(logits: mx.array, labels: mx.array) -> mx.array:
    """Fraction of rows whose arg-max equals the label."""
    _check_labels("accuracy", logits, labels)
    return mx.mean((mx.argmax(logits, axis=-1) == labels).astype(mx.float32))
