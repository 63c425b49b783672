"""AdaLoRA-style rank allocation (Zhang et al. 2023, "Adaptive Budget Allocation for PEFT").

Each adapted weight carries a rank mask ``lora_e`` (ΔW = scale · A · diag(e) · B). Over
meta-training the total rank budget b(t) falls from the initial total to ``target_rank`` on
AdaLoRA's cubic schedule,

    b(t) = b0                                                    t < t_i
           b_T + (b0 − b_T) · (1 − (t − t_i) / (T − t_i − t_f))³   t_i ≤ t < T − t_f
           b_T                                                   otherwise,

and the components with the lowest importance are masked out. Importance is AdaLoRA's smoothed
sensitivity: for a parameter p with (meta-)update Δp, I = |p · Δp|; Ī ← β1 Ī + (1 − β1) I,
Ū ← β2 Ū + (1 − β2) |I − Ī|, s = Ī · Ū; component i of a weight scores mean_j s(A_ji) + mean_j s(B_ij).
Here Δp is the outer update of the meta-learned adapter (for Reptile the pseudo-gradient step
β·(θ − mean θ̃)), the meta-learning counterpart of AdaLoRA's gradient. A pruned component gets no
update afterwards, so pruning is permanent.

``with_rank_allocation(meta, ...)`` wraps any algorithm's ``MetaStep``: the scores live in the
algorithm state (so checkpoints and resume keep them) and the masks in the adapter tree; all of it
runs on the device inside the compiled meta-step.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from reptile_fn.algorithms.base import MetaStep
from reptile_fn.peft.lora import LORA_A, LORA_B, LORA_E
from reptile_fn.tree import Tree


def budget(t, *, initial: int, target: int, total_steps: int, init_warmup: int, final_warmup: int):
    """AdaLoRA's cubic budget schedule at iteration ``t`` (an int or a scalar array)."""
    span = max(total_steps - init_warmup - final_warmup, 1)
    frac = mx.clip((mx.array(t, dtype=mx.float32) - init_warmup) / span, 0.0, 1.0)
    return mx.round(target + (initial - target) * (1 - frac) ** 3).astype(mx.int32)


def _adapted(adapter: Tree) -> list[tuple[str, Tree]]:
    """(path, node) for every adapted weight that has a rank mask."""
    out = []
    for path, _ in tree_flatten(adapter):
        if path.endswith("." + LORA_E):
            node = adapter
            prefix = path[: -len(LORA_E) - 1]
            for part in prefix.split("."):
                node = node[part]
            out.append((prefix, node))
    return out


def init_scores(adapter: Tree) -> Tree:
    """Zero EMA state (Ī, Ū) for every A and B entry of every masked weight."""
    out = {}
    for path, node in _adapted(adapter):
        z = {k: mx.zeros_like(node[k]) for k in (LORA_A, LORA_B)}
        out[path.replace(".", "/")] = {"mean": z, "unc": {k: mx.zeros_like(v) for k, v in z.items()}}
    return out


def component_scores(scores: Tree) -> dict[str, mx.array]:
    """Per-component importance s_i = mean_j s(A_ji) + mean_j s(B_ij), per weight."""
    out = {}
    for key, sc in scores.items():
        s_a = sc["mean"][LORA_A] * sc["unc"][LORA_A]
        s_b = sc["mean"][LORA_B] * sc["unc"][LORA_B]
        out[key.replace("/", ".")] = mx.mean(s_a, axis=0) + mx.mean(s_b, axis=1)
    return out


def update_scores(scores: Tree, before: Tree, after: Tree, beta1: float, beta2: float) -> Tree:
    """One EMA step of Ī and Ū from the change of each A and B entry."""
    new = {}
    nodes_before, nodes_after = dict(_adapted(before)), dict(_adapted(after))
    for key, sc in scores.items():
        path = key.replace("/", ".")
        b, a = nodes_before[path], nodes_after[path]
        mean, unc = {}, {}
        for k in (LORA_A, LORA_B):
            sens = mx.abs(b[k] * (b[k] - a[k]))
            mean[k] = beta1 * sc["mean"][k] + (1 - beta1) * sens
            unc[k] = beta2 * sc["unc"][k] + (1 - beta2) * mx.abs(sens - mean[k])
        new[key] = {"mean": mean, "unc": unc}
    return new


def prune(adapter: Tree, scores: Tree, keep) -> Tree:
    """Masks keeping the ``keep`` highest-scoring active components over all weights (ties keep more)."""
    comps = component_scores(scores)
    nodes = dict(_adapted(adapter))
    paths = list(comps)
    masked = [mx.where(nodes[p][LORA_E] > 0, comps[p], -mx.inf) for p in paths]
    flat = mx.concatenate(masked)
    order = mx.sort(flat)[::-1]
    threshold = order[mx.clip(keep - 1, 0, flat.shape[0] - 1)]
    out = {}
    for p, m in zip(paths, masked):
        out[p] = mx.where((m >= threshold) & (m > -mx.inf) & (keep > 0), 1.0, 0.0).astype(nodes[p][LORA_E].dtype)
    return out


def set_masks(adapter: Tree, masks: dict[str, mx.array]) -> Tree:
    """A copy of ``adapter`` with the given ``lora_e`` masks."""
    def rebuild(node: Tree, prefix: str) -> Tree:
        out = {}
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                out[k] = rebuild(v, path)
            elif k == LORA_E and prefix in masks:
                out[k] = masks[prefix]
            else:
                out[k] = v
        return out

    return rebuild(adapter, "")


def total_rank(adapter: Tree) -> mx.array:
    return sum(mx.sum(node[LORA_E]) for _, node in _adapted(adapter))


def with_rank_allocation(meta: MetaStep, *, adapter_key: str = "adapter", target_rank: int, total_steps: int,
                         init_warmup: int, final_warmup: int, beta1: float = 0.85, beta2: float = 0.85) -> MetaStep:
    """Wrap a meta-step so that, after each outer update, the adapter's rank masks follow the budget.

    ``params[adapter_key]`` is the adapter tree (with ``lora_e`` masks). The wrapped state is the
    algorithm's own state plus ``"rank_scores"``; metrics gain ``rank_total``; ``inner(state)`` is the
    algorithm's (learned rates, kept inner state). Build ``meta`` with ``compiled=False``: the wrapped
    step is compiled as a whole.
    """

    def init(params: Tree) -> Tree:
        state = dict(meta.init(params))
        state["rank_scores"] = init_scores(params[adapter_key])
        return state

    def step(params: Tree, state: Tree, batch, key: mx.array):
        inner_state = {k: v for k, v in state.items() if k != "rank_scores"}
        new_params, new_state, metrics = meta.step(params, inner_state, batch, key)
        scores = update_scores(state["rank_scores"], params[adapter_key], new_params[adapter_key], beta1, beta2)
        initial = sum(int(node[LORA_E].shape[0]) for _, node in _adapted(params[adapter_key]))
        b = budget(new_state["iteration"], initial=initial, target=target_rank, total_steps=total_steps,
                   init_warmup=init_warmup, final_warmup=final_warmup)
        adapter = set_masks(new_params[adapter_key], prune(new_params[adapter_key], scores, b))
        new_params = {**new_params, adapter_key: adapter}
        return new_params, {**new_state, "rank_scores": scores}, {**metrics, "rank_total": total_rank(adapter)}

    return MetaStep(init, mx.compile(step), meta.inner)
