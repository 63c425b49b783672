"""``init``: a run that starts from another run's (or a shipped) parameters instead of a fresh init."""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from reptile_fn import tree as T
from reptile_fn.errors import ConfigError
from reptile_fn.models import HEAD


def same_kind(donor, cfg, *, source: str, key: str) -> None:
    """A ConfigError unless the run ``source`` (its config ``donor``) can start the run of ``cfg``: a plain run (not
    an adapter beside a base) of the same kind of model (no setting turns an MLP into conv4 or an encoder)."""
    from reptile_fn import config as C

    if donor.peft.method != "none":
        raise ConfigError(f"{key} = {source} is itself a PEFT run (an adapter beside a base); point at a plain run")
    theirs, ours = C.model_kind(donor), C.model_kind(cfg)
    if theirs != ours:
        raise ConfigError(f"{key} = {source} is a {theirs} run (tasks.dataset = {donor.tasks.dataset}) and this run's "
                          f"model is {ours} (tasks.dataset = {cfg.tasks.dataset}); start from a run on the same kind of "
                          "data")


def found(source: str, *, key: str, otherwise: str):
    """The checkpoint file ``source`` (a run folder, its checkpoint or a shipped name) names, or a ConfigError under
    ``key`` that says what it is and what else to give (``otherwise``)."""
    from reptile_fn import pretrained
    from reptile_fn.errors import CheckpointError

    try:
        path = pretrained.resolve(source)
    except CheckpointError as e:
        raise ConfigError(f"{key} = {e}; or {otherwise}") from None
    if not path.is_file():
        what = "is not a regular file (a pipe, a device)" if path.exists() else "does not exist"
        raise ConfigError(f"{key} = {source} {what}; point it at a run (its folder or checkpoint.safetensors) or a "
                          f"shipped initialization (`reptile-fn info` lists them), or {otherwise}")
    return path


def warm_start(source: str, fresh: Callable, load: Callable, cfg) -> Callable:
    """(key) -> the parameters of ``source`` (a run folder, its checkpoint or a shipped name, read with ``load``,
    ``run.load``) in the tree ``fresh(key)`` builds, after ``same_kind`` checked it can start ``cfg``'s run.

    Every leaf is copied by path and must have the same shape, except a head of another shape (a run of
    another ``n_way``): it keeps its fresh init. A leaf only one side has is a ConfigError naming it. Only a
    fresh start reads ``source``: a warm-started run resumes and loads without it."""
    def initial(key: mx.array):
        found(source, key="init", otherwise="set init: null")
        params = fresh(key)
        donor_run, donor, _, _ = load(source, with_tasks=False)
        same_kind(donor_run.cfg, cfg, source=source, key="init")
        return transplant(donor, params, source=source)

    return initial


def transplant(donor, target, *, source: str, key: str = "init"):
    """``target`` with every leaf replaced by ``donor``'s at the same path; a head whose shape differs stays."""
    from mlx.utils import tree_flatten, tree_unflatten

    given, wanted = dict(tree_flatten(donor)), tree_flatten(target)
    extra = sorted(set(given) - {k for k, _ in wanted})
    missing = [k for k, _ in wanted if k not in given]
    if extra or missing:
        odd = ", ".join((extra + missing)[:3])
        raise ConfigError(f"{key} = {source} has another architecture (leaves only one side has: {odd}); set the "
                          "run's model settings (model.filters, model.norm, model.hidden, ...) to the checkpoint's")
    head = T.match(HEAD)
    out = []
    for path, leaf in wanted:
        if given[path].shape == leaf.shape:
            out.append((path, given[path].astype(leaf.dtype)))
        elif head(path):
            out.append((path, leaf))
        else:
            theirs = tuple(given[path].shape)
            fix = (f": it takes {theirs[-1]}-channel images, so set model.channels={theirs[-1]}"
                   if path == "conv0.w" and theirs[:-1] == tuple(leaf.shape[:-1])
                   else "; set the run's model and input settings to the checkpoint's")
            raise ConfigError(f"{key} = {source}: {path} has shape {theirs} there and {tuple(leaf.shape)} in this run"
                              f"{fix} (only a head of another n_way may differ)")
    return tree_unflatten(out)
