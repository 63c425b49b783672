"""Checks of a config that need more than one key, and of ``trainable`` against a model's parameters.

``reptile_fn.config.validate`` calls ``own_data`` and ``peft``; ``trainable`` needs the model, so the code
that builds the model calls it (``reptile_fn.config.check_trainable``)."""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Sequence

from reptile_fn.coerce import clipped
from reptile_fn.errors import ConfigError


def trainable(patterns: Sequence[str], paths: Iterable[str], *, source: str = "config") -> None:
    """A ConfigError unless every glob pattern of ``trainable`` matches at least one of the model's parameter
    ``paths`` (dotted, e.g. ``layer0.w``). The message names the patterns that match nothing and lists the
    paths (more than 24: numbered layers as one, ``encoder.layer*.query.w`` for ``encoder.layer0.query.w`` ...)."""
    paths = list(paths)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(path, p) for path in paths)]
    if not unmatched:
        return
    shown = paths if len(paths) <= 24 else list(dict.fromkeys(re.sub(r"\d+", "*", path) for path in paths))
    which = ", ".join(clipped(repr(p), 60) for p in unmatched[:5])
    which += f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
    example = next((f"{path.rsplit('.', 1)[0]}.*" for path in shown if path.startswith("head.")), "*")
    raise ConfigError(f"{source}: trainable pattern{'s' if len(unmatched) > 1 else ''} {which} match"
                      f"{'' if len(unmatched) > 1 else 'es'} no parameter of the model, whose parameters are "
                      f"{', '.join(shown) or 'none'}; use glob patterns over these paths, e.g. "
                      f"--set \"trainable=[{example}]\"")


DATASET_KEYS = {  # keys that only some data sets read; set on another, they would be ignored without a word
    "tasks.path": ("images", "csv"), "tasks.val_fraction": ("images", "csv"), "tasks.test_fraction": ("images", "csv"),
    "tasks.text_column": ("csv",), "tasks.label_column": ("csv",), "tasks.group_column": ("csv",),
    "tasks.split_column": ("csv",), "tasks.test_path": ("csv",), "model.channels": ("images",),
    "model.encoder": ("clinc150", "csv"), "tasks.test_split": ("omniglot", "clinc150", "images", "csv"),
    "tasks.protocol": ("omniglot",), "tasks.split_by": ("clinc150",), "tasks.invert": ("images",),
    "tasks.resample": ("images",), "model.image_size": ("images",)}  # Omniglot's images are 28 px, as the paper's


def dataset_keys(cfg, source: str) -> None:
    """A ConfigError for a key changed from its default on a data set that does not read it."""
    for key, datasets in DATASET_KEYS.items():
        section, name = key.split(".")
        value, default = getattr(getattr(cfg, section), name), getattr(type(getattr(cfg, section))(), name)
        if value != default and cfg.tasks.dataset not in datasets:
            raise ConfigError(f"{source}: {key} = {value!r} is read only when tasks.dataset is {' or '.join(datasets)}, "
                              f"and this run's is {cfg.tasks.dataset}; drop it (its default is {default!r})")


def synthetic_data_dir(cfg, source: str) -> None:
    """A ConfigError for a data folder given to a run of built-in synthetic tasks, which reads none (``--data-dir``
    would be ignored without a word; on other data sets it also locates the training data ``eval --data`` checks)."""
    if cfg.tasks.dataset == "synthetic" and cfg.tasks.data_dir:
        raise ConfigError(f"{source}: tasks.data_dir = {cfg.tasks.data_dir!r} is read by data sets that live in a "
                          "data folder (omniglot, clinc150), and this run's tasks are built-in synthetic families; "
                          "drop it (--data-dir)")


def own_data(cfg, source: str) -> None:
    t = cfg.tasks
    what = "a folder (or .zip) of class subfolders" if t.dataset == "images" else "a CSV file of text,label rows"
    if not t.path:
        raise ConfigError(f"{source}: tasks.dataset = {t.dataset} needs tasks.path, {what} (--set tasks.path=PATH)")
    if t.test_split not in ("test", "val", "all"):
        raise ConfigError(f"{source}: tasks.test_split = {t.test_split} is not a split of your data; use test, val or all")
    for key in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(t, key) < 1:
            raise ConfigError(f"{source}: tasks.{key} must be in [0, 1), got {getattr(t, key)}; e.g. 0.2")
    if t.test_fraction == 0 or t.val_fraction + t.test_fraction >= 1:
        raise ConfigError(f"{source}: tasks.test_fraction must be > 0 and tasks.val_fraction + tasks.test_fraction < 1 "
                          f"(got {t.val_fraction} and {t.test_fraction}), so that some classes are left to meta-train on; e.g. 0.2 and 0.2")
    default = type(t)()
    if t.split_column is not None and (t.val_fraction, t.test_fraction) != (default.val_fraction, default.test_fraction):
        raise ConfigError(f"{source}: tasks.split_column = {t.split_column!r} gives each label its split, so "
                          "tasks.val_fraction and tasks.test_fraction are not read; drop them")
    if t.dataset == "images" and cfg.model.image_size < 8:
        raise ConfigError(f"{source}: model.image_size = {cfg.model.image_size} is too small: conv4 halves each side four "
                          "times, so below 8 pixels its later layers see a single pixel; give 8 or more (28: Omniglot's "
                          "size, 84: mini-ImageNet's)")
    if cfg.model.channels not in (None, 1, 3):
        raise ConfigError(f"{source}: model.channels must be 1 (grayscale), 3 (RGB) or null (from the data), "
                          f"got {cfg.model.channels}; give one of those (null: as the images are)")


ADAPTER_KEYS = ("rank", "scale", "targets", "train_head", "meta_learn_base", "base", "base_families",
                "base_pretrain_iterations", "target_rank", "rank_warmup", "rank_final")  # peft.head serves plain runs too


def peft(cfg, source: str) -> None:
    p = cfg.peft
    if p.head == "prototypes":
        prototype_head(cfg, source)
    if p.method == "none":
        changed = [k for k in ADAPTER_KEYS if getattr(p, k) != getattr(type(p)(), k)]
        if changed:  # read only by a PEFT method: without one they would be ignored without a word
            raise ConfigError(f"{source}: peft.{changed[0]} = {getattr(p, changed[0])!r} is read only by a PEFT method, "
                              "and peft.method is none; set peft.method (lora, adalora, full, head) or drop it")
        return
    if tuple(cfg.trainable) != ("*",):
        raise ConfigError(f"{source}: trainable and peft.method = {p.method} both choose what adapts; "
                          "leave trainable at ['*'] (peft.train_head / peft.method decide)")
    for key in ("rank_warmup", "rank_final"):
        if not 0 <= getattr(p, key) < 1:
            raise ConfigError(f"{source}: peft.{key} must be in [0, 1), got {getattr(p, key)}")
    if p.rank_warmup + p.rank_final >= 1:
        raise ConfigError(f"{source}: peft.rank_warmup + peft.rank_final must be < 1 (pruning needs time between them)")
    if p.method == "head" and not p.train_head:
        raise ConfigError(f"{source}: peft.method = head with peft.train_head = false adapts nothing; set train_head: true")
    if p.head == "zero" and (p.method in ("head", "full") or p.meta_learn_base or not p.train_head):
        raise ConfigError(f"{source}: peft.head = zero adapts the head from zero in every task beside a meta-learned "
                          f"adapter; it needs method lora or adalora, train_head: true and meta_learn_base: false "
                          f"(got method {p.method}, train_head {p.train_head}, meta_learn_base {p.meta_learn_base})")
    if p.base_families is not None and cfg.tasks.dataset != "synthetic":
        raise ConfigError(f"{source}: peft.base_families is for synthetic tasks; with {cfg.tasks.dataset} set it to null "
                          "(the base is pretrained on the run's training classes)")
    if p.base not in ("random", "pretrain", "init") and not _names_a_run(p.base):
        import difflib

        from reptile_fn import pretrained

        plain = pretrained.plain_names()  # an adapter (minilm-intent-lora) cannot be a base
        close = difflib.get_close_matches(p.base, ["random", "pretrain", "init", *plain], n=1)
        raise ConfigError(f"{source}: peft.base = {p.base!r}"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + ": use random, pretrain, init, a plain run (its folder or checkpoint.safetensors), or a "
                          f"shipped initialization ({', '.join(plain)})")
    if p.base == "random" and cfg.tasks.dataset in ("clinc150", "csv"):  # it would silently be the pretrained encoder
        raise ConfigError(f"{source}: peft.base = random on a text run: its model's init is the pretrained encoder "
                          "(there is no random encoder); use init, or pretrain")


def prototype_head(cfg, source: str) -> None:
    """``peft.head: prototypes`` rebuilds a classifier's head from each support set: it must adapt."""
    p = cfg.peft
    if p.method != "none" and not p.train_head:
        raise ConfigError(f"{source}: peft.head = prototypes needs train_head: true (the rebuilt head adapts)")
    if p.method == "none" and tuple(cfg.trainable) != ("*",) and not any("head" in t for t in cfg.trainable):
        raise ConfigError(f"{source}: peft.head = prototypes needs the head among the trainable leaves; "
                          f"add 'head.*' to trainable (got {list(cfg.trainable)})")


def within_group(cfg, source: str) -> None:
    if cfg.tasks.test_within_group and cfg.tasks.test_split == "banking77":
        raise ConfigError(f"{source}: tasks.test_within_group with tasks.test_split = banking77: Banking77 is one "
                          "domain, so its episodes are within one group already; set tasks.test_within_group to false")
    for part in ("train", "test"):
        if getattr(cfg.tasks, f"{part}_within_group") and cfg.tasks.dataset not in ("clinc150", "csv"):
            raise ConfigError(f"{source}: tasks.{part}_within_group (each {part} task's classes from one group) is "
                              f"for clinc150 (its domains) and csv (tasks.group_column), not {cfg.tasks.dataset}; set "
                              "it to false")


# keys that choose which classes a run holds out (the seed also shuffles the class split and builds the init)
SPLIT_KEYS = ("seed", "tasks.protocol", "tasks.split_by", "tasks.val_fraction", "tasks.test_fraction",
              "tasks.split_column", "tasks.group_column")


def same_split(stored, cfg, source: str) -> None:
    """A ConfigError if ``cfg`` (a saved run's config with evaluation overrides) changes a key that decides which
    classes the run held out: its "held-out" episodes would then draw classes it meta-trained on."""
    from reptile_fn.config import get  # the package imports this module first

    changed = [f"{k} = {get(cfg, k)!r} (trained with {get(stored, k)!r})" for k in SPLIT_KEYS if get(cfg, k) != get(stored, k)]
    if changed:
        raise ConfigError(f"{source}: {'; '.join(changed)} would change which classes are held out, so evaluation would "
                          "draw classes the run meta-trained on; leave it as trained (more --episodes for other "
                          "episodes), or score other data with --data")


TRAINING_KEYS = ("meta_iterations", "meta_batch_size", "outer_lr", "outer_lr_final", "log_every", "checkpoint_every",
                 "init", "tasks.num_train_tasks", "eval.every", "eval.during_training_episodes")


def training_only(stored, cfg) -> list[str]:
    """The keys ``cfg`` (a saved run's config with evaluation overrides) changes that only meta-training reads:
    a --set of them does nothing to an evaluation (the caller warns, so that no one reads the results as theirs)."""
    from reptile_fn.config import get

    return [k for k in TRAINING_KEYS if get(cfg, k) != get(stored, k)]


def _names_a_run(value: str) -> bool:
    """Whether ``value`` can name a run: a shipped initialization, or a path (a run written elsewhere may not exist
    on this machine: building the run checks the file)."""
    from pathlib import Path

    from reptile_fn import pretrained

    return bool(value.strip()) and (value in pretrained.names() or "/" in value or "\\" in value
                                    or value.endswith(".safetensors") or Path(value).expanduser().exists())
