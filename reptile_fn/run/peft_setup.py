"""A PEFT run's wiring: what adapts and what the outer loop learns, and where its base comes from (``peft.base``:
pretrained on the tasks, the model's own init, or a plain run's parameters).

``build`` calls these for a config whose ``peft.method`` is not ``none``; nothing else branches on PEFT.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from reptile_fn import config as C
from reptile_fn import tree as T
from reptile_fn.baselines import pretrain
from reptile_fn.errors import ConfigError
from reptile_fn.models import Model
from reptile_fn.run.warm import found, same_kind, transplant
from reptile_fn.tasks import make_distribution

BASES = ("random", "pretrain", "init")  # peft.base's keywords; anything else names a plain run or a shipped init


def wiring(cfg: C.Config, base_model: Model):
    """(peft.Peft, what adapts, what the outer loop learns) for a PEFT config."""
    from reptile_fn import peft

    p = cfg.peft
    if p.base not in BASES:
        found(p.base, key="peft.base", otherwise="use pretrain, init or random")
    pf = peft.peft_model(base_model, method=p.method, targets=p.targets, rank=p.rank, scale=p.scale)
    inner_pat, meta_pat = peft.patterns(p.method, train_head=p.train_head, meta_learn_base=p.meta_learn_base,
                                        reptile=cfg.algorithm == "reptile", meta_learn_head=p.head == "meta")
    if cfg.algorithm == "anil":
        inner_pat = (peft.HEAD,)
    pf = pf._replace(inner=inner_pat, meta=meta_pat)
    return pf, T.match(inner_pat), T.match(meta_pat)


def initial_params(cfg: C.Config, pf, base_model: Model, loss, tasks, load: Callable) -> Callable:
    """(key) -> {"base": the configured base, "adapter": a fresh adapter}; pretraining runs only when called.

    ``load`` reads a saved run (``run.build.load``), passed in as ``warm_start`` takes it: build imports this module."""
    p = cfg.peft

    def initial(key: mx.array):
        k_base, k_adapter = mx.random.split(key)
        base = load_base(cfg, base_model, loss, tasks, k_base, load)
        return {"base": base, "adapter": pf.new_adapter(k_adapter, base)}

    start = initial if p.base not in ("random", "init") else pf.model.init
    if p.head == "zero":  # every task adapts the head from zero (peft.head: zero)
        return lambda key: zero_head(start(key))
    return start


def zero_head(params):
    """``params`` with every leaf of the base's head set to zero."""
    from reptile_fn import peft

    head, rest = T.partition(params, T.match(peft.HEAD))
    return T.combine(T.zeros_like(head), rest)


def load_base(cfg: C.Config, base_model: Model, loss, tasks, key: mx.array, load: Callable):
    """The PEFT base: pretrained on (part of) the task distribution, or a run's checkpoint."""
    p = cfg.peft
    if p.base in ("random", "init"):  # the model's own init (text: the pretrained encoder and a fresh head)
        return base_model.init(key)
    if p.base == "pretrain":
        source = tasks
        if p.base_families is not None:
            t = cfg.tasks
            source = make_distribution(p.base_families, k_shot=t.k_shot, query_size=t.query_size,
                                       num_train_tasks=t.num_train_tasks, seed=cfg.seed + 1)
            if source.out_dim != tasks.out_dim or source.in_dim != tasks.in_dim:
                raise ConfigError(f"peft.base_families {list(p.base_families)} have inputs/outputs "
                                  f"{source.in_dim}/{source.out_dim}, the run's tasks {tasks.in_dim}/{tasks.out_dim}; "
                                  "pick families of the same kind")
        return pretrain(base_model, loss, source, key, iterations=p.base_pretrain_iterations)
    donor_run, donor, _, _ = load(p.base, with_tasks=False)  # a run folder, its checkpoint or a shipped name
    same_kind(donor_run.cfg, cfg, source=p.base, key="peft.base")
    return transplant(donor, base_model.init(key), source=p.base, key="peft.base")
