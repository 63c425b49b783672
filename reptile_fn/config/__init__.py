"""Run configuration: frozen dataclasses loaded from YAML, validated at the edge.

The dataclass defaults *are* the built-in default config (``configs/default.yaml`` mirrors them).
Every error is a ``ConfigError`` whose one-line message names the key and the fix. ``files``: reading a
config file or a shipped config by name; ``checks``: checks across keys, and ``trainable`` against a model;
``limits``: the largest value of every integer setting, and the settings that must be positive.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from reptile_fn.coerce import clipped, coerce, shown, suggest, without_removed
from reptile_fn.config import checks, files, limits
from reptile_fn.errors import ConfigError

check_trainable = checks.trainable  # (patterns, parameter paths): a ConfigError if a pattern matches none
shipped_names = files.shipped_names  # names of the configs shipped with the package (--config NAME)
LIMITS, NO_LIMITS = limits.LIMITS, limits.NO_LIMITS  # the largest value of every integer key; the variable lifting them
check_limit = limits.check_limit  # (key, value, source): a ConfigError if the value is above the key's limit


@dataclass(frozen=True)
class TasksConfig:
    dataset: str = "synthetic"  # synthetic (the families below) | omniglot | clinc150 | images (a folder) | csv (text,label)
    families: tuple[str, ...] = ("linear", "xor", "circles", "spiral")
    k_shot: int = 5  # support examples per class (regression: support points)
    query_size: int = 15  # query examples per class (regression: query points)
    num_train_tasks: int = 10000  # size of the fixed training pool; 0 = a fresh task every time
    train_shots: int | None = None  # support examples per class during meta-training; None: k_shot
    n_way: int = 5  # omniglot, clinc150: classes per episode
    data_dir: str | None = None  # omniglot: folder with images_*.zip; None: $REPTILE_FN_DATA
    test_split: str = "test"  # held-out split: test | val | evaluation (omniglot) | banking77 (text) | all (images/csv)
    split_by: str = "domain"  # clinc150: class-disjoint split by domain or by intent
    protocol: str = "auto"  # omniglot: standard (both zips) | alphabets (background only) | auto
    path: str | None = None  # images: a folder (or .zip) of class subfolders; csv: a CSV file of text,label rows
    invert: str = "never"  # images: never | always | light (each image on a light background: strokes on white)
    resample: str = "box"  # images: box (area average) | nearest | lanczos: how images are resized
    val_fraction: float = 0.2  # images/csv: share of classes (or groups) held out for validation
    test_fraction: float = 0.2  # images/csv: share of classes (or groups) held out for testing
    text_column: str = "text"  # csv: the column holding the sentence
    label_column: str = "label"  # csv: the column holding the class
    group_column: str | None = None  # csv: a column of groups held out together (e.g. a domain)
    split_column: str | None = None  # csv: a column naming each row's split (train | val | test) instead
    test_path: str | None = None  # csv: a second CSV whose classes are the test split
    train_within_group: bool = False  # clinc150/csv: every meta-training task's classes from one group (domain)
    test_within_group: bool = False  # clinc150/csv: every held-out episode's classes from one group (domain)


@dataclass(frozen=True)
class ModelConfig:
    """The model follows ``tasks.dataset`` (``model_kind``): synthetic → mlp, omniglot → conv4, clinc150 → text."""

    hidden: int = 64  # mlp
    depth: int = 2  # mlp
    activation: str = "relu"  # mlp
    filters: int = 64  # conv4
    image_size: int = 28  # images: pixels per side after resizing (omniglot: 28)
    channels: int | None = None  # images: 1 (grayscale) or 3 (RGB); null: from the data (all gray → 1)
    norm: str | None = None  # conv4: batch | null
    conv_impl: str = "auto"  # conv4: auto | native | im2col
    encoder: str | None = None  # text: a BERT-style safetensors folder; None: all-MiniLM-L6-v2 (the text extra)
    normalize: bool = True  # text: L2-normalise the pooled sentence embedding before the head


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 500  # held-out episodes for the final few-shot evaluation
    inner_steps: int = 10  # adaptation steps at evaluation: results for 0..inner_steps
    inner_lr: float | None = None  # None: the training inner_lr
    every: int = 500  # held-out evaluation during training, every this many meta-iterations
    during_training_episodes: int = 100
    transductive: bool = True  # batch-norm statistics over the whole query set; false: one query at a time
    inner_batch_size: int | None = None  # examples per adaptation step at evaluation; None: the training inner_batch_size


@dataclass(frozen=True)
class PeftConfig:
    """Parameter-efficient meta-learning: a frozen base tree and an adapter tree (``reptile_fn.peft``)."""

    method: str = "none"  # none | lora | adalora | full | head
    rank: int = 4  # lora/adalora: rank r of each adapter (adalora: the initial rank)
    scale: float = 1.0  # lora: ΔW = scale · A · B (Hugging Face peft: scale = lora_alpha / r)
    targets: tuple[str, ...] = ("layer*.w", "conv*.w")  # glob patterns over base paths that get an adapter
    train_head: bool = True  # the head adapts (and is meta-learned) beside the adapter
    head: str = "meta"  # meta: the head's init is meta-learned | zero: every task starts it at zero, never meta-learned
    # | prototypes: every task starts it at the support set's prototype classifier (Proto-MAML), never meta-learned
    head_scale: float = 1.0  # prototypes: logit_k = head_scale · (‖z‖² − ‖z − c_k‖²), the start's confidence
    meta_learn_base: bool = False  # also meta-learn the base (Reptile: the base then adapts too)
    base: str = "pretrain"  # random | pretrain | init (the model's own init: text = the pretrained encoder) | a run or shipped name
    base_families: tuple[str, ...] | None = None  # synthetic: families the base is pretrained on (null: the run's)
    base_pretrain_iterations: int = 2000
    target_rank: int | None = None  # adalora: total rank left at the end (null: half the initial total)
    rank_warmup: float = 0.1  # adalora: fraction of meta-iterations before pruning starts
    rank_final: float = 0.2  # adalora: fraction at the end spent at the target rank


@dataclass(frozen=True)
class Config:
    algorithm: str = "reptile"
    seed: int = 0
    init: str | None = None  # start from this run's checkpoint or shipped init (same architecture; a head of other n_way starts fresh)
    meta_iterations: int = 4000
    meta_batch_size: int = 8
    inner_lr: float = 0.02
    inner_steps: int = 5
    inner_optimizer: str = "sgd"
    inner_batch_size: int | None = None  # None: the whole support set each inner step
    inner_adam_betas: tuple[float, ...] = (0.9, 0.999)  # inner Adam (Nichol et al. use beta1 = 0)
    inner_state: str = "task"  # task: a fresh inner optimizer per task | persistent: one, kept across tasks (Reptile)
    outer_lr: float | None = None  # β / the outer learning rate; None: the algorithm's default
    outer_lr_final: float | None = 0.0  # anneal it linearly to this; None: constant
    outer_optimizer: str | None = None  # sgd | adam; None: the algorithm's default
    trainable: tuple[str, ...] = ("*",)  # glob patterns over parameter paths that adapt
    log_every: int = 100
    checkpoint_every: int = 1000
    tasks: TasksConfig = field(default_factory=TasksConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)


REMOVED = {
    "model.kind": "the model follows tasks.dataset: synthetic → mlp, omniglot → conv4, clinc150 → text",
    "peft.dropout": "adapters are merged into the weights, so there is no low-rank input to drop out",
}
"""Keys that carried no choice and were removed: a config that sets one to the value it could only have
gets a one-line notice (a stored run's config, silently) and loads; any other value is an error."""


def choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of every key with a fixed vocabulary, from the registries of the code they name."""
    from reptile_fn import optim
    from reptile_fn.algorithms import ALGORITHMS
    from reptile_fn.models import ACTIVATIONS, CONV_IMPLS
    from reptile_fn.peft import METHODS
    from reptile_fn.tasks import DATASETS
    from reptile_fn.tasks.image_files import RESAMPLE
    from reptile_fn.tasks.images import INVERT
    from reptile_fn.tasks.omniglot import PROTOCOLS
    from reptile_fn.tasks.text import SPLIT_BY

    return {
        "algorithm": tuple(ALGORITHMS),
        "tasks.dataset": tuple(DATASETS),
        "tasks.test_split": ("test", "val", "evaluation", "banking77", "all"),
        "tasks.split_by": SPLIT_BY,
        "tasks.protocol": PROTOCOLS,
        "tasks.invert": INVERT,
        "tasks.resample": RESAMPLE,
        "model.norm": ("batch",),
        "model.conv_impl": CONV_IMPLS,
        "model.activation": tuple(ACTIVATIONS),
        "inner_optimizer": optim.OPTIMIZERS,
        "inner_state": ("task", "persistent"),
        "outer_optimizer": optim.OPTIMIZERS,
        "peft.method": ("none", *METHODS),
        "peft.head": ("meta", "zero", "prototypes"),
    }


# the held-out splits each data set has (``tasks.test_split``); evaluation: Omniglot's second zip
SPLITS = {"omniglot": ("test", "val", "evaluation"), "clinc150": ("test", "val", "banking77"),
          "images": ("test", "val", "all"), "csv": ("test", "val", "all")}


def _datasets() -> dict[str, str]:
    from reptile_fn.tasks import DATASETS

    return DATASETS


def model_kind(cfg: Config) -> str:
    """The model a config's data set takes: ``mlp``, ``conv4`` or ``text``."""
    return _datasets()[cfg.tasks.dataset]


def leaf_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every settable dotted key, e.g. ``inner_lr``, ``tasks.k_shot``."""
    out = []
    for f in fields(cls):
        t = _hint(cls, f.name)
        if is_dataclass(t):
            out += leaf_keys(t, prefix + f.name + ".")
        else:
            out.append(prefix + f.name)
    return out


def from_dict(data: dict, *, source: str = "config", stored: bool = False) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict.

    ``stored``: the config of a saved run (a checkpoint's metadata): removed keys are dropped silently.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fix = "it is damaged: use a checkpoint written by `reptile-fn train`" if stored else "write key: value lines"
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level, got {type(data).__name__}; {fix}")
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    only = {"model.kind": _datasets().get(str(tasks.get("dataset", TasksConfig.dataset))), "peft.dropout": 0}
    data = without_removed(data, REMOVED, only, source, quiet=stored)
    unknown = _unknown_keys(data) if stored else []
    if unknown:  # not a typo to suggest a fix for: another version wrote it, or it is damaged
        raise ConfigError(f"{source}: the stored config has a key this version does not know, {unknown[0]!r}: another "
                          "version of reptile_fn wrote it, or it is damaged; use the version that wrote it, or re-create "
                          "it with `reptile-fn train`")
    cfg = _build(Config, data, "", source)
    validate(cfg, source=source)
    return cfg


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (``None``: the built-in default; a name without a folder that is not a file: the
    shipped config of that name, e.g. ``omniglot_5w1s``) and apply ``key=value`` overrides."""
    data, source = files.read(path) if path is not None else ({}, "built-in default config")
    for item in overrides:
        data = apply_override(data, item)
    if overrides:
        source += " with --set " + " ".join(clipped(o, 80) for o in overrides)
    return from_dict(data, source=source)


def apply_override(data: dict, item: str) -> dict:
    """Set one ``key=value`` (value parsed as YAML) in a nested dict; a bare unique leaf name works too."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set inner_lr=0.02")
    key, raw = item.split("=", 1)
    key = resolve_key(key.strip())
    if not raw.strip():
        raise ConfigError(f"--set {item!r}: no value after '='; give one, e.g. --set {key}=VALUE (null for none)")
    try:
        value = yaml.load(raw, Loader=files.Loader)
    except RecursionError:
        raise ConfigError(f"--set {key}: the value is nested too deeply to read; give a plain value or a short list") from None
    except files.DuplicateKey as e:
        raise ConfigError(f"--set {key}: {e}") from None
    except yaml.YAMLError:
        value = raw
    out = _deep_copy(data)
    node = out
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
    node[last] = value
    return out


def resolve_key(key: str) -> str:
    """Map a dotted key or a unique leaf name (``k_shot`` → ``tasks.k_shot``) to its dotted key."""
    keys = leaf_keys()
    if key in keys:
        return key
    if key in REMOVED:
        raise ConfigError(f"{key} is no longer a setting ({REMOVED[key]}); drop --set {key}")
    by_leaf = [k for k in keys if k.split(".")[-1] == key]
    if len(by_leaf) == 1:
        return by_leaf[0]
    if len(by_leaf) > 1:
        raise ConfigError(f"key {key!r} is ambiguous; use one of {', '.join(by_leaf)}")
    if key in _sections():
        example = next(k for k in keys if k.startswith(key + "."))
        raise ConfigError(f"{key} is a section, not a key; set one of its keys, e.g. --set {example}=VALUE")
    raise ConfigError(f"unknown config key {key!r}"
                      + (suggest(key, keys) or "; the keys are in README's key table and configs/default.yaml"))


def to_dict(cfg: Any) -> dict:
    """A plain nested dict (tuples as lists) suitable for YAML or JSON."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if is_dataclass(v) else list(v) if isinstance(v, tuple) else v
    return out


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate(cfg: Config, *, source: str = "config") -> None:
    """Check value ranges and cross-field constraints; raise ConfigError naming the key."""
    from reptile_fn.tasks import make_distribution  # the registries live with the code they name

    allowed = choices()
    allowed["tasks.test_split"] = SPLITS.get(cfg.tasks.dataset, allowed["tasks.test_split"])
    for key in leaf_keys():
        v = get(cfg, key)
        if v is None:
            continue
        if key in allowed and v not in allowed[key]:
            of = f" (the splits of {cfg.tasks.dataset}, which `eval --split` sets)" if key == "tasks.test_split" else ""
            raise ConfigError(f"{source}: {key} = {shown(v)} is not one of {', '.join(allowed[key])}{of}"
                              f"{suggest(str(v), allowed[key]) or '; give one of them'}")
        if isinstance(v, str) and not v.strip():  # init: "" would silently start from scratch
            raise ConfigError(f"{source}: {key} is empty; give a value, or null (for none / the default)")
        if key in limits.POSITIVE and v <= 0:
            hint = limits.POSITIVE_HINTS.get(key, "give a positive number")
            raise ConfigError(f"{source}: {key} must be > 0, got {v}; {hint}")
        if key in limits.NON_NEGATIVE and v < 0:
            raise ConfigError(f"{source}: {key} must be >= 0, got {v}; give 0 or more")
        if key in LIMITS:
            check_limit(key, v, source)
    if cfg.tasks.n_way == 1:
        raise ConfigError(f"{source}: tasks.n_way = 1 leaves nothing to classify (every answer is right, 100% "
                          "accuracy); give 2 or more")
    if not cfg.trainable:
        raise ConfigError(f"{source}: trainable is empty; use ['*'] to adapt every parameter")
    if len(cfg.inner_adam_betas) != 2 or not all(0 <= b < 1 for b in cfg.inner_adam_betas):
        raise ConfigError(f"{source}: inner_adam_betas must be two numbers in [0, 1), got {shown(list(cfg.inner_adam_betas))}; "
                          "e.g. [0.9, 0.999] (Adam's defaults) or [0, 0.999] (supervised-reptile's)")
    if cfg.inner_state == "persistent" and (cfg.algorithm != "reptile" or cfg.inner_optimizer != "adam"):
        raise ConfigError(f"{source}: inner_state = persistent (one inner Adam state kept across tasks, as "
                          "supervised-reptile) needs algorithm = reptile and inner_optimizer = adam; use inner_state: task")
    checks.peft(cfg, source)
    checks.within_group(cfg, source)
    checks.dataset_keys(cfg, source)
    checks.synthetic_data_dir(cfg, source)
    if cfg.tasks.dataset in ("images", "csv"):
        return checks.own_data(cfg, source)
    if cfg.tasks.dataset == "clinc150":
        return
    if cfg.tasks.dataset == "omniglot":
        if max(cfg.tasks.k_shot, cfg.tasks.train_shots or 0) + cfg.tasks.query_size > 20:
            raise ConfigError(f"{source}: Omniglot has 20 drawers per character, so k_shot (or train_shots) + "
                              f"query_size must be <= 20; lower tasks.query_size")
        return
    try:  # the samplers own the family checks (unknown names, mixed kinds, duplicates)
        make_distribution(cfg.tasks.families, k_shot=cfg.tasks.k_shot, query_size=cfg.tasks.query_size,
                          num_train_tasks=cfg.tasks.num_train_tasks, seed=cfg.seed)
    except ConfigError as e:
        raise ConfigError(f"{source}: tasks.families: {e}") from None


def get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    return from_dict(functools.reduce(apply_override, overrides, to_dict(cfg)))


# --- building dataclasses from dicts, with type checks ---------------------------------------

def _build(cls: type, data: dict, prefix: str, source: str):
    names = {f.name for f in fields(cls)}
    for k in data:
        if k not in names:
            full = prefix + str(k)
            hint = suggest(full, leaf_keys() + _sections()) or "; the keys are in README's key table and configs/default.yaml"
            raise ConfigError(f"{source}: unknown key {full!r}{hint}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        t = _hint(cls, f.name)
        v = data[f.name]
        key = prefix + f.name
        if is_dataclass(t):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {key} must be a section (a mapping), got {shown(v)}; write its keys "
                                  f"under it, e.g. --set {key}.{fields(t)[0].name}=...")
            kwargs[f.name] = _build(t, v, key + ".", source)
        else:
            kwargs[f.name] = coerce(v, t, key, source)
    return cls(**kwargs)


def _unknown_keys(data: dict, cls: type = Config, prefix: str = "") -> list[str]:
    """The dotted keys of ``data`` that ``cls`` has no field for (sections: looked into)."""
    names = {f.name: _hint(cls, f.name) for f in fields(cls)}
    out = []
    for k, v in data.items():
        if k not in names:
            out.append(prefix + str(k))
        elif is_dataclass(names[k]) and isinstance(v, dict):
            out += _unknown_keys(v, names[k], prefix + k + ".")
    return out


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _sections() -> list[str]:
    return [f.name for f in fields(Config) if is_dataclass(_hint(Config, f.name))]


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


