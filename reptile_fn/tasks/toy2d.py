"""Two-class 2-D classification families: linear, xor, circles and spiral.

Each family has ``sample_<family>_params(key) -> params`` (one task) and
``sample_<family>_data(params, key, n) -> (x, y)``: n points *per class*, generated
class-conditionally so the classes are exactly balanced (no rejection sampling). ``y`` is int32,
class-major (n zeros, then n ones); ``x`` is float32 (2n, 2), roughly within [−4, 4]².

The ranges below are the task distribution; they are read at call time, so tuning one changes
every later sample. All functions are single-task and pure: vmap them over a leading task axis.
"""

from __future__ import annotations

import math

import mlx.core as mx

Params = dict[str, mx.array]

N_CLASSES = 2
ANGLE_RANGE = (0.0, 2 * math.pi)
"""Rotation θ of every family's frame, U[0, 2π)."""

LINEAR_POINT_RANGE = (-1.0, 1.0)
"""linear: a point t on the boundary line, t ~ U[−1, 1]²."""
LINEAR_ALONG_RANGE = (-3.0, 3.0)
"""linear: offset u along the line, u ~ U[−3, 3]."""
LINEAR_DISTANCE_RANGE = (0.1, 3.0)
"""linear: distance |d| from the line, |d| ~ U[0.1, 3]; class 1 on the side of the normal."""

XOR_CENTER_RANGE = (-0.5, 0.5)
"""xor: centre t ~ U[−0.5, 0.5]²."""
XOR_SCALE_RANGE = (1.0, 3.0)
"""xor: scale s ~ U[1, 3]."""
XOR_COORD_RANGE = (0.1, 1.0)
"""xor: frame coordinates |a_i| ~ U[0.1, 1]·s; class 1 in quadrants (+,+)/(−,−)."""

CIRCLES_CENTER_RANGE = (-1.0, 1.0)
"""circles: centre c ~ U[−1, 1]²."""
CIRCLES_R_IN_RANGE = (0.5, 1.5)
"""circles: class 0 radius ~ U[0, r_in], r_in ~ U[0.5, 1.5]."""
CIRCLES_GAP_RANGE = (0.2, 0.6)
"""circles: empty gap between the classes, gap ~ U[0.2, 0.6]."""
CIRCLES_RING_WIDTH_RANGE = (0.5, 1.5)
"""circles: class 1 radius ~ U[r_in + gap, r_out], r_out = r_in + gap + U[0.5, 1.5]."""

SPIRAL_CENTER_RANGE = (-0.5, 0.5)
"""spiral: centre c ~ U[−0.5, 0.5]²."""
SPIRAL_TAU_RANGE = (0.15, 1.0)
"""spiral: arm parameter τ ~ U[0.15, 1]."""
SPIRAL_RADIUS = 3.0
"""spiral: radius at τ is SPIRAL_RADIUS·τ."""
SPIRAL_TURNS_RANGE = (0.5, 1.0)
"""spiral: turns ~ U[0.5, 1]; arm c is at angle 2π·turns·τ + c·π + θ."""
SPIRAL_NOISE_RANGE = (0.05, 0.15)
"""spiral: isotropic Gaussian noise σ ~ U[0.05, 0.15]."""


def _labels(n: int) -> mx.array:
    """Class-major balanced labels: [0]*n + [1]*n, int32."""
    return mx.repeat(mx.arange(N_CLASSES, dtype=mx.int32), n)


def _rotate(angle: mx.array, v: mx.array) -> mx.array:
    """Rotate the rows of v (m, 2) by angle: R(θ) v."""
    c, s = mx.cos(angle), mx.sin(angle)
    return mx.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]], axis=-1)


def _class_sign(y: mx.array) -> mx.array:
    """+1 for class 1, −1 for class 0 (float32)."""
    return 2.0 * y.astype(mx.float32) - 1.0


def _random_sign(key: mx.array, shape: tuple[int, ...]) -> mx.array:
    return mx.where(mx.random.bernoulli(shape=shape, key=key), 1.0, -1.0)


# --- linear ---------------------------------------------------------------------------------


def sample_linear_params(key: mx.array) -> Params:
    """A line through ``point`` t with unit normal n = (cos θ, sin θ), θ = ``angle``."""
    angle_key, point_key = mx.random.split(key)
    return {
        "angle": mx.random.uniform(*ANGLE_RANGE, (), key=angle_key),
        "point": mx.random.uniform(*LINEAR_POINT_RANGE, (2,), key=point_key),
    }


def sample_linear_data(params: Params, key: mx.array, n: int) -> tuple[mx.array, mx.array]:
    """x = t + d·n + u·n⊥, u ~ U[−3, 3], |d| ~ U[0.1, 3], sign(d) = +1 for class 1, −1 for 0."""
    y = _labels(n)
    distance_key, along_key = mx.random.split(key)
    d = _class_sign(y) * mx.random.uniform(*LINEAR_DISTANCE_RANGE, y.shape, key=distance_key)
    u = mx.random.uniform(*LINEAR_ALONG_RANGE, y.shape, key=along_key)
    # In the frame (n, n⊥) the point is (d, u); rotating by θ maps e₁ to n and e₂ to n⊥.
    x = params["point"] + _rotate(params["angle"], mx.stack([d, u], axis=-1))
    return x, y


# --- xor ------------------------------------------------------------------------------------


def sample_xor_params(key: mx.array) -> Params:
    """A frame rotated by ``angle`` θ, scaled by ``scale`` s and centred at ``center`` t."""
    angle_key, scale_key, center_key = mx.random.split(key, 3)
    return {
        "angle": mx.random.uniform(*ANGLE_RANGE, (), key=angle_key),
        "scale": mx.random.uniform(*XOR_SCALE_RANGE, (), key=scale_key),
        "center": mx.random.uniform(*XOR_CENTER_RANGE, (2,), key=center_key),
    }


def sample_xor_data(params: Params, key: mx.array, n: int) -> tuple[mx.array, mx.array]:
    """x = t + R(θ) a, |a_i| ~ U[0.1, 1]·s; class 1 has sign(a₁) = sign(a₂), class 0 opposite."""
    y = _labels(n)
    magnitude_key, sign_key = mx.random.split(key)
    unit = mx.random.uniform(*XOR_COORD_RANGE, (2 * n, 2), key=magnitude_key)
    magnitude = params["scale"] * unit
    first_sign = _random_sign(sign_key, y.shape)
    signs = mx.stack([first_sign, first_sign * _class_sign(y)], axis=-1)
    x = params["center"] + _rotate(params["angle"], signs * magnitude)
    return x, y


# --- circles --------------------------------------------------------------------------------


def sample_circles_params(key: mx.array) -> Params:
    """A disc (class 0) of radius ``r_in`` inside a ring [r_in + gap, r_out] (class 1)."""
    center_key, r_in_key, gap_key, width_key = mx.random.split(key, 4)
    r_in = mx.random.uniform(*CIRCLES_R_IN_RANGE, (), key=r_in_key)
    gap = mx.random.uniform(*CIRCLES_GAP_RANGE, (), key=gap_key)
    width = mx.random.uniform(*CIRCLES_RING_WIDTH_RANGE, (), key=width_key)
    return {
        "center": mx.random.uniform(*CIRCLES_CENTER_RANGE, (2,), key=center_key),
        "r_in": r_in,
        "gap": gap,
        "r_out": r_in + gap + width,
    }


def sample_circles_data(params: Params, key: mx.array, n: int) -> tuple[mx.array, mx.array]:
    """x = c + r (cos α, sin α), α ~ U[0, 2π); r ~ U[0, r_in] (class 0) or U[r_in + gap, r_out]."""
    y = _labels(n)
    angle_key, radius_key = mx.random.split(key)
    alpha = mx.random.uniform(*ANGLE_RANGE, y.shape, key=angle_key)
    low = mx.where(y == 1, params["r_in"] + params["gap"], 0.0)
    high = mx.where(y == 1, params["r_out"], params["r_in"])
    r = low + (high - low) * mx.random.uniform(shape=y.shape, key=radius_key)
    x = params["center"] + r[:, None] * mx.stack([mx.cos(alpha), mx.sin(alpha)], axis=-1)
    return x, y


# --- spiral ---------------------------------------------------------------------------------


def sample_spiral_params(key: mx.array) -> Params:
    """Two arms with ``turns`` turns, rotated by ``angle``, at ``center``, with ``noise`` σ."""
    center_key, angle_key, turns_key, noise_key = mx.random.split(key, 4)
    return {
        "center": mx.random.uniform(*SPIRAL_CENTER_RANGE, (2,), key=center_key),
        "angle": mx.random.uniform(*ANGLE_RANGE, (), key=angle_key),
        "turns": mx.random.uniform(*SPIRAL_TURNS_RANGE, (), key=turns_key),
        "noise": mx.random.uniform(*SPIRAL_NOISE_RANGE, (), key=noise_key),
    }


def spiral_arm(params: Params, tau: mx.array, label: mx.array) -> mx.array:
    """Arm ``label`` at τ, noise-free: c + 3τ (cos φ, sin φ), φ = 2π·turns·τ + label·π + θ."""
    arm = label.astype(mx.float32) * math.pi
    phi = 2 * math.pi * params["turns"] * tau + arm + params["angle"]
    radius = SPIRAL_RADIUS * tau
    return params["center"] + radius[..., None] * mx.stack([mx.cos(phi), mx.sin(phi)], axis=-1)


def sample_spiral_data(params: Params, key: mx.array, n: int) -> tuple[mx.array, mx.array]:
    """x = spiral_arm(τ, y) + σ ε, τ ~ U[0.15, 1], ε ~ N(0, I₂)."""
    y = _labels(n)
    tau_key, noise_key = mx.random.split(key)
    tau = mx.random.uniform(*SPIRAL_TAU_RANGE, y.shape, key=tau_key)
    noise = params["noise"] * mx.random.normal((2 * n, 2), key=noise_key)
    return spiral_arm(params, tau, y) + noise, y
