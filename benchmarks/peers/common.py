"""What every peer shares: the workloads' constants, their data, their initial parameters, and the timer.

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
    outer_lr: float  # Reptile step size beta: theta <- theta + beta * (mean_i theta_i - theta); W4: no outer step
    pool: int  # meta-batches pre-sampled and cycled, so sampling is never timed
    adam_betas: tuple[float, float] | None = None  # None: inner SGD; else inner Adam (eps ADAM_EPS) with these betas


W1 = Workload("W1", inner_steps=5, inner_lr=0.02, inner_batch=None, outer_lr=0.1, pool=16)  # sine regression, MLP
W2 = Workload("W2", inner_steps=5, inner_lr=1e-3, inner_batch=10, outer_lr=1.0, pool=4)  # Omniglot-shaped, conv4
# W3: Reptile LoRA meta-step on all-MiniLM-L6-v2, 5-way 5-shot sentences (configs/clinc_5w5s_lora.yaml's training step)
W3 = Workload("W3", inner_steps=5, inner_lr=0.01, inner_batch=None, outer_lr=0.01, pool=2, adam_betas=(0.9, 0.999))
# W4: evaluation, 5-way 1-shot, conv4 + batch norm, 50 inner Adam steps (configs/omniglot_5w1s.yaml's eval, full batch)
W4 = Workload("W4", inner_steps=50, inner_lr=1e-3, inner_batch=None, outer_lr=0.0, pool=1, adam_betas=(0.0, 0.999))
WORKLOADS = {"W1": W1, "W2": W2, "W3": W3, "W4": W4}
DEFAULT_META_BATCH = {"W1": 8, "W2": 5}  # the Reptile workloads with a plain in-framework reference (print_cross_check)
DEFAULT_SIZE = {**DEFAULT_META_BATCH, "W3": 2, "W4": 100}  # W3: meta-batch; W4: episodes per evaluation
UNITS = {"W4": "episodes"}  # what a workload's rate counts per second (default: meta-steps)
ADAM_EPS = 1e-8

K_SHOT = 10  # W1 support points per task
MLP_SIZES = (1, 40, 40, 1)
N_WAY, PER_CLASS, IMAGE = 5, 10, 28  # W2: 50 support images per task
CONV_LAYERS, FILTERS = 4, 64  # 28 -> 14 -> 7 -> 4 -> 2, then 2*2*64 = 256 features
BN_EPS = 1e-5  # W4's batch norm: statistics of the batch it is applied to (population variance), no running averages
EVAL_QUERY_PER_CLASS = 5  # W4: support 1 image per class (5), query 5 per class (25)
# W3: all-MiniLM-L6-v2 (hidden 384, 6 layers) with rank-4 LoRA on every layer's query and value weights
TEXT_WAY, TEXT_SHOT, TEXT_LENGTH = 5, 5, 16  # 25 support sentences per task of 16 tokens (CLINC150: ~12-16)
TEXT_HIDDEN, TEXT_LAYERS, TEXT_RANK, TEXT_VOCAB = 384, 6, 4, 30522
LORA_TARGETS = ("query", "value")
CLS, SEP = 101, 102  # BERT's [CLS] and [SEP] ids in all-MiniLM-L6-v2's vocabulary


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
    return {"W1": sine_pool, "W2": image_pool, "W3": token_pool, "W4": eval_episodes}[workload](meta_batch, seed=seed)


def token_pool(meta_batch: int, pool: int = W3.pool, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`pool` meta-batches of synthetic 5-way 5-shot sentence tasks: ids (M, 25, 16) int32 ([CLS] random ids [SEP]),
    mask (M, 25, 16) int32 all ones (no padding), labels (M, 25) int32 (each class 5 times, shuffled)."""
    rng = np.random.default_rng(seed)
    n = TEXT_WAY * TEXT_SHOT
    out = []
    for _ in range(pool):
        ids = rng.integers(1000, TEXT_VOCAB, (meta_batch, n, TEXT_LENGTH)).astype(np.int32)  # ordinary word pieces
        ids[..., 0], ids[..., -1] = CLS, SEP
        labels = np.stack([rng.permutation(np.repeat(np.arange(TEXT_WAY), TEXT_SHOT)) for _ in range(meta_batch)])
        out.append((ids, np.ones_like(ids), labels.astype(np.int32)))
    return out


def eval_episodes(n_episodes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """W4's held-out episodes, random Omniglot-shaped 5-way 1-shot: support x (E, 5, 28, 28, 1) float32 NHWC and
    y (E, 5) int32 (one image per class), query x (E, 25, 28, 28, 1) and y (E, 25) (5 per class)."""
    rng = np.random.default_rng(seed)
    n_query = N_WAY * EVAL_QUERY_PER_CLASS
    sx = rng.uniform(0.0, 1.0, (n_episodes, N_WAY, IMAGE, IMAGE, 1)).astype(np.float32)
    qx = rng.uniform(0.0, 1.0, (n_episodes, n_query, IMAGE, IMAGE, 1)).astype(np.float32)
    sy = np.stack([rng.permutation(N_WAY) for _ in range(n_episodes)]).astype(np.int32)
    qy = np.tile(np.repeat(np.arange(N_WAY), EVAL_QUERY_PER_CLASS), (n_episodes, 1)).astype(np.int32)
    return sx, sy, qx, qy


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


def conv4_bn_params(seed: int = 0) -> dict[str, np.ndarray]:
    """W4's conv4 with batch norm: conv4_params plus s{i} (64,) ones and o{i} (64,) zeros, batch norm's scale and offset."""
    p = conv4_params(seed)
    for i in range(CONV_LAYERS):
        p[f"s{i}"], p[f"o{i}"] = np.ones(FILTERS, np.float32), np.zeros(FILTERS, np.float32)
    return p


def lora_head_params(seed: int = 0) -> dict[str, np.ndarray]:
    """W3's trainable start: `layer{i}.{query,value}.lora_a` (384, 4) ~ U[-1/sqrt(384), 1/sqrt(384)] and `.lora_b`
    (4, 384) zeros (dW = A @ B, in x out), and the head `head.w` (384, 5), `head.b` (5,) (PyTorch's Linear default)."""
    rng = np.random.default_rng(seed)
    p = {}
    for i in range(TEXT_LAYERS):
        for name in LORA_TARGETS:
            p[f"layer{i}.{name}.lora_a"] = _uniform(rng, TEXT_HIDDEN, (TEXT_HIDDEN, TEXT_RANK))
            p[f"layer{i}.{name}.lora_b"] = np.zeros((TEXT_RANK, TEXT_HIDDEN), np.float32)
    p["head.w"] = _uniform(rng, TEXT_HIDDEN, (TEXT_HIDDEN, TEXT_WAY))
    p["head.b"] = _uniform(rng, TEXT_HIDDEN, (TEXT_WAY,))
    return p


def init_params(workload: str, seed: int = 0) -> dict[str, np.ndarray]:
    return {"W1": mlp_params, "W2": conv4_params, "W3": lora_head_params, "W4": conv4_bn_params}[workload](seed)


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
    """One row; `meta_steps_per_s` is the rate of the workload's unit (UNITS: W4 counts episodes, not meta-steps)."""
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
        "unit": UNITS.get(workload, "meta-steps"),
    }


def print_table(rows: list[dict], checks: dict[tuple[str, str], float]) -> None:
    print(f"{'variant':<32} {'wl':<3} {'M':>3} {'dev':<4} {'meta-steps/s':>13}  {'check (max|diff|)':>17}  note")
    for r in rows:
        c = checks.get((r["variant"], r["workload"]))
        cs = f"{c:.2e}" if c is not None else "-"
        unit = r.get("unit", "meta-steps")
        note = "; ".join(filter(None, [r["note"], f"{unit}/s" if unit != "meta-steps" else None]))
        rate = r["meta_steps_per_s"]
        print(f"{r['variant']:<32} {r['workload']:<3} {r['meta_batch_size']:>3} {r['device']:<4} "
              f"{f'{rate:,.1f}' if rate >= 10 else f'{rate:.3g}':>13}  {cs:>17}  {note}")


def print_cross_check(steps: int = 3) -> None:
    """JAX's plain reference against PyTorch's, from the same numpy start and data: the math itself agrees."""
    from . import jax_peer, torch_peer

    if not (jax_peer.available() and torch_peer.available()):
        return
    for wl, m in DEFAULT_META_BATCH.items():
        d = max_abs_diff(jax_peer.reference(wl, m, steps), torch_peer.reference(wl, m, steps))
        print(f"cross-framework {wl} M={m}: max|jax reference - torch reference| after {steps} meta-steps = {d:.2e}")
