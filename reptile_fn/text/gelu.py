"""GELU with the exact Gaussian CDF, built from multiplies and adds so it compiles into one fused kernel.

erf(x) ≈ x·P(x²)/Q(x²) on [−4, 4] (±1 beyond, in float32): the rational approximation Eigen and XLA
use for float32 erf, max abs error 4e-7 against math.erf (mx.erf: 4e-7 too). On the Linux mlx[cpu]
wheel mx.erf (like mx.exp) costs ~25 ns per element, which made GELU half of all-MiniLM-L6-v2's
forward time. ``gelu``'s gradient is the derivative of the same rational function, written out (one
fused kernel again, not the ~30 stored intermediates autodiff would make). benchmarks/text.py
--profile measures both.
"""

from __future__ import annotations

import math

import mlx.core as mx

_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
_SQRT_HALF = 1.0 / math.sqrt(2.0)


# the derivatives' coefficients, highest power of x² first
_ERF_DP = tuple((len(_ERF_P) - 1 - i) * c for i, c in enumerate(_ERF_P[:-1]))
_ERF_DQ = tuple((len(_ERF_Q) - 1 - i) * c for i, c in enumerate(_ERF_Q[:-1]))


def _poly(coefs: tuple[float, ...], s: mx.array) -> mx.array:
    """Horner: the polynomial with these coefficients (highest power first) at s."""
    value = coefs[0]
    for c in coefs[1:]:
        value = value * s + c
    return value


def erf(x: mx.array) -> mx.array:
    """The error function in float32 from multiplies and adds only (see ``_ERF_P``); differentiable."""
    x = mx.clip(x, -4.0, 4.0)
    s = x * x
    return x * _poly(_ERF_P, s) / _poly(_ERF_Q, s)


def _gelu_grad(x: mx.array) -> mx.array:
    """d gelu / dx = (1 + erf(u))/2 + x·erf'(u)/(2√2), u = x/√2, erf' the derivative of ``erf``'s rational function."""
    u = mx.clip(x * _SQRT_HALF, -4.0, 4.0)
    s = u * u
    p, q, dp, dq = _poly(_ERF_P, s), _poly(_ERF_Q, s), _poly(_ERF_DP, s), _poly(_ERF_DQ, s)
    r = 1.0 / q
    d_erf = (p + 2.0 * s * (dp - p * dq * r)) * r  # d/du of u·p(u²)/q(u²); 0 where u was clipped
    return 0.5 + 0.5 * u * p * r + (0.5 * _SQRT_HALF) * x * d_erf * (mx.abs(x * _SQRT_HALF) < 4.0)


@mx.custom_function
def gelu(x: mx.array) -> mx.array:
    """GELU with the exact Gaussian CDF: x·Φ(x) = x·(1 + erf(x/√2))/2 (BERT's "gelu")."""
    return 0.5 * x * (1.0 + erf(x * _SQRT_HALF))


@gelu.vjp
def _gelu_vjp(x, cotangent, output):  # one input: MLX passes the array itself, not a tuple
    return cotangent * _gelu_grad(x)
