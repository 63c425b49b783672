"""Sine-wave regression (Finn et al. 2017, MAML §5.1): y = A sin(x − φ).

One task is a pair (A, φ); its data are points x ~ U[X_RANGE] with exact targets. The functions
are single-task and pure, so they vmap over a leading task axis and run inside ``mx.compile``.
"""

from __future__ import annotations

import math

import mlx.core as mx

Params = dict[str, mx.array]

AMPLITUDE_RANGE = (0.1, 5.0)
"""A ~ U[0.1, 5]."""
PHASE_RANGE = (0.0, math.pi)
"""φ ~ U[0, π]."""
X_RANGE = (-5.0, 5.0)
"""x ~ U[−5, 5]."""


def sample_params(key: mx.array) -> Params:
    """One task: ``{"amplitude": A, "phase": φ}``, both scalars."""
    amplitude_key, phase_key = mx.random.split(key)
    return {
        "amplitude": mx.random.uniform(*AMPLITUDE_RANGE, (), key=amplitude_key),
        "phase": mx.random.uniform(*PHASE_RANGE, (), key=phase_key),
    }


def sine_curve(params: Params, x: mx.array) -> mx.array:
    """The task's true curve A sin(x − φ), elementwise on x of any shape (one task's params)."""
    return params["amplitude"] * mx.sin(x - params["phase"])


def sample_data(params: Params, key: mx.array, n: int) -> tuple[mx.array, mx.array]:
    """n points of one task: x ~ U[−5, 5], y = A sin(x − φ); both float32 of shape (n, 1)."""
    x = mx.random.uniform(*X_RANGE, (n, 1), key=key)
    return x, sine_curve(params, x)
