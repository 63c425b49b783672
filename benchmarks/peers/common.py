"""What every peer shares: the two workloads' constants, their data, their initial parameters, and the timer.

Everything here is numpy, so the JAX and PyTorch peers (and the MLX side) start from the same parameters
and see the same tasks. Canonical layout (MLX/JAX style): dense weights are (in, out), conv kernels are
HWIO, images NHWC, and the conv4 features are flattened in (h, w, c) order before the head.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    inner_steps: int
    inner_lr: float
    inner_batch: int | None  # None: every inner step sees the whole support set
    outer_lr: float  # Reptile step size beta: theta <- theta + beta * (mean_i theta_i - theta)
    pool: int  # meta-batches pre-sampled and cycled, so sampling is never timed


W1 = Workload("W1", inner_steps=5, inner_lr=0.02, inner_batch=None, outer_lr=0.1, pool=16)  # sine regression, MLP
W2 = Workload("W2", inner_steps=5, inner_lr=1e-3, inner_batch=10, outer_lr=1.0, pool=4)  # Omniglot-shaped, conv4
WORKLOADS = {"W1": W1, "W2": W2}
DEFAULT_META_BATCH = {"W1": 8, "W2": 5}

K_SHOT = 10  # W1 support points per task
MLP_SIZES = (1, 40, 40, 1)
N_WAY, PER_CLASS, IMAGE = 5, 10, 28  # W2: 50 support images per task
CONV_LAYERS, FILTERS = 4, 64  # 28 -> 14 -> 7 -> 4 -> 2, then 2*2*64 = 256 features


def inner_slices(w: Workload, support: int) -> list[slice]:
    """The support examples inner step t uses: all of them (W1), or images [10t, 10t+10) in fixed order (W2)."""
    if w.inner_batch is None:
        return [slice(0, support)] * w.inner_steps
    return [slice(t * w.inner_batch, (t + 1) * w.inner_batch) for t in range(w.inner_steps)]


# ---------------------------------------------------------------------------------------------- data


def sine_pool(meta_batch: int, pool: int = W1.pool, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`pool` meta-batches of sine tasks: x (M, K, 1), y (M, K, 1), float32."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pool):
        amp = rng.uniform(0.1, 5.0, (meta_batch, 1, 1))
        phase = rng.uniform(0.0, np.pi, (meta_batch, 1, 1))
        x = rng.uniform(-5.0, 5.0, (meta_batch, K_SHOT, 1))
        out.append((x.astype(np.float32), (amp * np.sin(x - phase)).astype(np.float32)))
    return out


def image_pool(meta_batch: int, pool: int = W2.pool, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`pool` meta-batches of random Omniglot-shaped tasks: x (M, 50, 28, 28, 1) float32 NHWC, y (M, 50) int32."""
    rng = np.random.default_rng(seed)
    n = N_WAY * PER_CLASS
    return [
        (
            rng.uniform(0.0, 1.0, (meta_batch, n, IMAGE, IMAGE, 1)).astype(np.float32),
            rng.integers(0, N_WAY, (meta_batch, n)).astype(np.int32),
        )
        for _ in range(pool)
    ]


def data_pool(workload: str, meta_batch: int, seed: int = 0):
    return (sine_pool if workload == "W1" else image_pool)(meta_batch, seed=seed)


# ---------------------------------------------------------------------------------------------- parameters


def _uniform(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]) -> np.ndarray:
    # PyTorch's default for nn.Linear and nn.Conv2d: weight and bias ~ U[-1/sqrt(fan_in), 1/sqrt(fan_in)].
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def mlp_params(seed: int = 0) -> dict[str, np.ndarray]:
    """1-40-40-1 MLP: w{i} (in, out), b{i} (out,)."""
    rng = np.random.default_rng(seed)
    p = {}
    for i, (n_in, n_out) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:])):
        p[f"w{i}"] = _uniform(rng, n_in, (n_in, n_out))
        p[f"b{i}"] = _uniform(rng, n_in, (n_out,))
    return p


def conv4_params(seed: int = 0) -> dict[str, np.ndarray]:
    """conv4: c{i} (3, 3, in, 64) HWIO and cb{i} (64,); head w (256, 5) over (h, w, c)-flattened features, b (5,)."""
    rng = np.random.default_rng(seed)
    p, c_in = {}, 1
    for i in range(CONV_LAYERS):
        p[f"c{i}"] = _uniform(rng, 9 * c_in, (3, 3, c_in, FILTERS))
        p[f"cb{i}"] = _uniform(rng, 9 * c_in, (FILTERS,))
        c_in = FILTERS
    p["w"] = _uniform(rng, 4 * FILTERS, (4 * FILTERS, N_WAY))
    p["b"] = _uniform(rng, 4 * FILTERS, (N_WAY,))
    return p


def init_params(workload: str, seed: int = 0) -> dict[str, np.ndarray]:
    return mlp_params(seed) if workload == "W1" else conv4_params(seed)


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# ---------------------------------------------------------------------------------------------- timing


def time_meta_steps(
    step: Callable[[], None], sync: Callable[[], None], *, repeats: int, min_block_s: float, warmup: int
) -> list[float]:
    """The one timing protocol of every variant; returns meta-steps/s per timed block.

    `step()` runs one meta-step (on the next pooled meta-batch) and keeps its result; `sync()` waits until
    that result is materialised. Warm-up calls (which compile) are never timed into a block; each timed
    block runs n meta-steps and ends with sync(); n comes from the warm-up, and a block that still ends
    short of min_block_s is thrown away and rerun with a larger n.
    """
    per_step = math.inf
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        step()
        sync()
        per_step = min(per_step, time.perf_counter() - t0)  # the minimum leaves out the compile
    n = max(1, math.ceil(min_block_s / per_step))
    samples: list[float] = []
    while len(samples) < repeats:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        dt = time.perf_counter() - t0
        if dt >= min_block_s:
            samples.append(n / dt)
        else:
            n = math.ceil(n * 1.2 * min_block_s / dt)
    return samples


def result(framework: str, version: str, variant: str, workload: str, meta_batch: int, device: str,
           samples: list[float], note: str | None = None) -> dict:
    return {
        "framework": framework,
        "version": version,
        "variant": variant,
        "workload": workload,
        "meta_batch_size": meta_batch,
        "device": device,
        "meta_steps_per_s": statistics.median(samples),
        "samples": samples,
        "note": note,
    }


def print_table(rows: list[dict], checks: dict[tuple[str, str], float]) -> None:
    print(f"{'variant':<32} {'wl':<3} {'M':>3} {'dev':<4} {'meta-steps/s':>13}  {'check (max|diff|)':>17}  note")
    for r in rows:
        c = checks.get((r["variant"], r["workload"]))
        cs = f"{c:.2e}" if c is not None else "-"
        print(f"{r['variant']:<32} {r['workload']:<3} {r['meta_batch_size']:>3} {r['device']:<4} "
              f"{r['meta_steps_per_s']:>13,.1f}  {cs:>17}  {r['note'] or ''}")


def print_cross_check(steps: int = 3) -> None:
    """JAX's plain reference against PyTorch's, from the same numpy start and data: the math itself agrees."""
    from . import jax_peer, torch_peer

    if not (jax_peer.available() and torch_peer.available()):
        return
    for wl, m in DEFAULT_META_BATCH.items():
        d = max_abs_diff(jax_peer.reference(wl, m, steps), torch_peer.reference(wl, m, steps))
        print(f"cross-framework {wl} M={m}: max|jax reference - torch reference| after {steps} meta-steps = {d:.2e}")
