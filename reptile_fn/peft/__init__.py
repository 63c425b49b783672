"""Parameter-efficient meta-learning: a frozen base tree beside an adapter tree.

A PEFT run's parameters are one tree, ``{"base": <base params>, "adapter": <LoRA tree>}``, and its
model applies the base with the adapter merged in (``lora.lora_apply``). What adapts in the inner
loop and what the outer loop meta-learns are path predicates over that tree, handed to the same
algorithms and inner loop as every other run (no second code path):

| method  | inner loop adapts                  | outer loop meta-learns                          |
|---------|------------------------------------|-------------------------------------------------|
| lora    | adapter A, B (+ base.head)         | the same (+ the whole base with meta_learn_base) |
| adalora | as lora, with rank masks pruned over meta-training (``adalora``)                      |
| head    | base.head                          | base.head (+ the base with meta_learn_base)     |
| full    | the whole base                     | the whole base                                  |

Reptile meta-learns exactly what it adapts, so with ``meta_learn_base`` the base adapts too.
With ``meta_learn_head=False`` (config ``peft.head: zero``) the head starts every task at zero,
adapts, and is never meta-learned: the "zeroing trick" of Kao et al. (ICLR 2022), which keeps a
meta-learned head from carrying one task's arbitrary label order into the next.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import mlx.core as mx

from reptile_fn import tree as T
from reptile_fn import models
from reptile_fn.models import Model
from reptile_fn.peft import adalora, io, lora
from reptile_fn.peft.io import load_adapters, save_adapters, tree_hash
from reptile_fn.peft.lora import lora_apply, lora_init, merge, ranks, trainable_count
from reptile_fn.tree import PathPredicate, Tree

METHODS = ("lora", "adalora", "head", "full")
HEAD = f"base.{models.HEAD}"
ADAPTER_TRAINABLE = tuple(f"adapter.{p}" for p in lora.TRAINABLE)


class Peft(NamedTuple):
    """How a PEFT run is built: its model over ``{"base", "adapter"}`` and the two predicates."""

    model: Model  # init(key) -> {"base": random base, "adapter": fresh adapter}; apply(params, x)
    new_adapter: Callable[[mx.array, Tree], Tree]  # (key, base) -> a fresh adapter (B = 0)
    inner: tuple[str, ...]  # patterns of what adapts in the inner loop
    meta: tuple[str, ...]  # patterns of what the outer loop meta-learns


def patterns(method: str, *, train_head: bool = True, meta_learn_base: bool = False,
             reptile: bool = False, meta_learn_head: bool = True) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(inner, meta) glob patterns over ``{"base", "adapter"}`` paths for a method (see the module table).

    ``meta_learn_head=False``: the head adapts in every task from the same fixed start (a zero head,
    ``peft.head: zero``) and the outer loop never moves it.
    """
    head = (HEAD,) if train_head else ()
    if method in ("lora", "adalora"):
        inner = ADAPTER_TRAINABLE + head
    elif method == "head":
        inner = (HEAD,)
    elif method == "full":
        inner = ("base.*",)
    else:
        raise ValueError(f"unknown PEFT method {method!r}; use lora, adalora, head or full")
    meta = inner + (("base.*",) if meta_learn_base and "base.*" not in inner else ())
    if reptile:  # Reptile's update is (adapted − θ): only what adapts can move
        inner = meta
    if not meta_learn_head and method != "head":
        if "base.*" in meta:
            raise ValueError("a zero head (meta_learn_head=False) needs the base frozen: it cannot be excluded from "
                             "'base.*'; drop meta_learn_base or method full")
        meta = tuple(p for p in meta if p != HEAD)
    return inner, meta


def peft_model(base_model: Model, *, method: str, targets=("layer*.w", "conv*.w"), rank: int = 4,
               scale: float = 1.0) -> Peft:
    """Wrap a model as a PEFT model over ``{"base", "adapter"}`` (``head``/``full``: an empty adapter)."""
    uses_adapter = method in ("lora", "adalora")

    def new_adapter(key: mx.array, base: Tree) -> Tree:
        if not uses_adapter:
            return {}
        return lora_init(key, base, targets=targets, rank=rank, scale=scale, mask=method == "adalora")

    def init(key: mx.array) -> Tree:
        k_base, k_adapter = mx.random.split(key)
        base = base_model.init(k_base)
        return {"base": base, "adapter": new_adapter(k_adapter, base)}

    def apply(params: Tree, x: mx.array) -> mx.array:
        return base_model.apply(merge(params["base"], params.get("adapter", {}), scale=scale), x)  # head/full: no adapter

    inner, meta = patterns(method)
    return Peft(Model(init, apply), new_adapter, inner, meta)


def counts(params: Tree, inner: PathPredicate | None, meta: PathPredicate | None) -> dict[str, int]:
    """Total parameters, those adapted per task, and those meta-learned (AdaLoRA: active ranks only)."""
    def count(pred):
        chosen = T.partition(params, pred)[0]
        n = T.param_count(chosen)
        if chosen.get("adapter"):  # every A, B is chosen together: count active rank components only
            n += trainable_count(params["adapter"]) - T.param_count(chosen["adapter"])
        return n

    total = T.param_count(params) - T.param_count(T.partition(params, T.match("*.lora_e"))[0])
    return {"total": total, "adapted": count(inner), "meta_learned": count(meta)}


__all__ = ["HEAD", "METHODS", "Peft", "adalora", "counts", "io", "load_adapters", "lora", "lora_apply", "lora_init", "merge",
           "patterns", "peft_model", "ranks", "save_adapters", "trainable_count", "tree_hash"]
