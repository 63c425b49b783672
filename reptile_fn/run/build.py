"""Config -> Run: the tasks, model, loss, inner loop and meta-step of a run, and nothing else.

All algorithm- and PEFT-specific wiring lives here: which leaves adapt (ANIL: the head; PEFT: the
adapter), what the outer loop learns, the outer optimizer and its schedule, AdaLoRA's rank
allocation, the starting parameters. The loop, the evaluation and the CLI take a ``Run`` and never
branch on the algorithm again.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from functools import cached_property, partial
from pathlib import Path
from typing import Callable, NamedTuple

import mlx.core as mx

from reptile_fn import checkpoint, optim
from reptile_fn import config as C
from reptile_fn import tree as T
from reptile_fn.algorithms import ALGORITHMS, DEFAULTS, LOCAL, MetaStep, Reduce
from reptile_fn.episode import Episode, Sampler
from reptile_fn.errors import CheckpointError, ConfigError, DataError
from reptile_fn.inner import InnerLoop
from reptile_fn.losses import accuracy, cross_entropy, mse
from reptile_fn.heads import prototype_head
from reptile_fn.models import HEAD, Model, conv4, mlp
from reptile_fn.tasks import make_distribution
from reptile_fn.tree import PathPredicate
from reptile_fn.run import peft_setup
from reptile_fn.run.files import CONFIG, checked_iteration, config_edits, require_finite
from reptile_fn.run.stored import own_data_overrides, stored_shapes
from reptile_fn.run.warm import warm_start


class Keys(NamedTuple):
    """The run's PRNG keys, all from its seed: a resumed run draws exactly what an uninterrupted one does."""

    init: mx.array
    train: mx.array
    eval_during: mx.array
    eval_final: mx.array
    random_init: mx.array


def run_keys(seed: int) -> Keys:
    return Keys(*mx.random.split(mx.random.key(seed), 5))


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """Everything a run is built from, derived from its Config alone.

    ``inner`` is the loop tasks adapt with in meta-training (``meta`` was built with it);
    ``evaluation_loop`` derives the loop evaluation adapts with. ``meta_trainable`` is what the outer
    loop learns (None: what the algorithm decides); ``peft`` the PEFT wiring of a PEFT run.
    """

    cfg: C.Config
    tasks: Sampler | None  # None when loaded without its data (``load(..., with_tasks=False)``)
    model: Model
    loss: Callable
    metric: Callable | None  # accuracy for classification, None for regression
    meta: MetaStep
    inner: InnerLoop
    initial_params: Callable  # (key) -> the starting parameters (PEFT: the configured base + a fresh adapter)
    peft: object = None  # peft.Peft, or None
    meta_trainable: PathPredicate | None = None
    eval_split: Callable | None = None  # how evaluation chunks episodes (per_episode_curves's split)
    shapes: tuple = ()  # (in_dim, out_dim) of the model's inputs and outputs

    @property
    def in_dim(self):
        return self.shapes[0]

    @cached_property
    def train_tasks(self) -> Sampler:
        """The sampler of meta-training episodes: ``tasks`` with ``train_shots`` support examples if set."""
        shots = self.cfg.tasks.train_shots
        try:
            return dataclasses.replace(self.tasks, k_shot=shots) if shots else self.tasks
        except ConfigError as e:
            if "k_shot + query_size" not in str(e):
                raise
            raise ConfigError(f"tasks.train_shots = {shots} with query_size = {self.cfg.tasks.query_size} needs "
                              f"{shots + self.cfg.tasks.query_size} examples of a class, more than the data has: "
                              f"{str(e).split(' but ', 1)[-1].split(';')[0]}; lower tasks.train_shots") from None

    def sample_train(self, key: mx.array, n_tasks: int) -> Episode:
        return self.train_tasks.sample_train(key, n_tasks)

    @property
    def rebuilt_init(self):
        """The model's init from the run's seed: the tree a checkpoint is restored into, and the reference it
        is saved against (leaves still equal to it, such as a frozen pretrained encoder, are stored as digests)."""
        return self.model.init(run_keys(self.cfg.seed).init)


def evaluation_loop(run: Run, state=None, *, steps: int | None = None, trainable="run") -> InnerLoop:
    """The inner loop evaluation adapts with: ``eval.inner_steps`` steps at ``eval.inner_lr`` (else the
    training rate), on ``eval.inner_batch_size`` (else the training) mini-batches.

    With the algorithm ``state`` it is the meta-learned init's loop (``MetaStep.inner``: Meta-SGD's learned
    rates win over ``eval.inner_lr``; a kept inner state is the start); without, a baseline's.
    ``trainable``: which leaves adapt, ``"run"`` as in training (ANIL: the head), else a predicate or None.
    """
    cfg = run.cfg
    loop = run.meta.inner(state) if state is not None else run.inner._replace(start=None)
    lr = loop.lr if isinstance(loop.lr, dict) else (cfg.eval.inner_lr or cfg.inner_lr)
    loop = loop._replace(lr=lr, steps=cfg.eval.inner_steps if steps is None else steps, first_order=False,
                         batch_size=cfg.eval.inner_batch_size or cfg.inner_batch_size)
    return loop if trainable == "run" else loop._replace(trainable=trainable)


def build(cfg: C.Config, reduce: Reduce = LOCAL, *, shapes: tuple | None = None) -> Run:
    """Build tasks, model, loss, the inner loop and the compiled meta-step for a config.

    ``reduce``: how the meta-step's block of tasks makes up the meta-batch (several processes).
    ``shapes``: ``(in_dim, out_dim)`` to build the model without loading the data (``tasks`` is then None).
    """
    encoder = _encoder(cfg)
    tasks = make_tasks(cfg, tokenizer=encoder[2] if encoder else None) if shapes is None else None
    shapes = (tasks.in_dim, tasks.out_dim) if shapes is None else shapes
    model = make_model(cfg, *shapes, encoder)
    classification = (tasks.kind if tasks is not None else _families(cfg).kind if C.model_kind(cfg) == "mlp"
                      else "classification") == "classification"
    loss = cross_entropy if classification else mse
    patterns = (HEAD,) if cfg.algorithm == "anil" and tuple(cfg.trainable) == ("*",) else cfg.trainable
    if cfg.peft.method == "none" and tuple(patterns) != ("*",):  # patterns that adapt nothing are a typo
        C.check_trainable(patterns, T.paths(model.init(mx.random.key(0))), source="trainable")
    trainable, meta_trainable, pf, initial_params = trainable_predicate(patterns), None, None, model.init
    if cfg.peft.method != "none":
        pf, trainable, meta_trainable = peft_setup.wiring(cfg, model)
        initial_params = peft_setup.initial_params(cfg, pf, model, loss, tasks, load)
        model = pf.model
    if cfg.init is not None:
        if cfg.peft.method != "none":
            raise ConfigError(f"init = {cfg.init} starts a whole network; a PEFT run takes its base from peft.base "
                              "(a plain run's checkpoint.safetensors) and meta-learns a fresh adapter: set init: null")
        initial_params = warm_start(cfg.init, initial_params, load, cfg)
    inner = InnerLoop(lr=cfg.inner_lr, steps=cfg.inner_steps, optimizer=cfg.inner_optimizer,
                      batch_size=cfg.inner_batch_size, trainable=trainable, adam_betas=tuple(cfg.inner_adam_betas),
                      head_init=_head_init(cfg, model, classification))
    meta = _meta_step(cfg, model, loss, inner, meta_trainable, reduce)
    eval_split = None
    if C.model_kind(cfg) == "text":  # episodes of similar length, cut to it, a few at a time (text.batching)
        from reptile_fn.text.batching import by_length  # sentences packed into shared rows unless steps take mini-batches

        packed = (cfg.eval.inner_batch_size or cfg.inner_batch_size) is None
        eval_split = by_length if packed else partial(by_length, pack=False)
    return Run(cfg, tasks, model, loss, accuracy if classification else None, meta, inner, initial_params, pf,
               meta_trainable, eval_split, tuple(shapes))


def _head_init(cfg: C.Config, model: Model, classification: bool):
    """``peft.head: prototypes``: every task's head starts as its support set's prototype classifier."""
    if cfg.peft.head != "prototypes":
        return None
    if not classification:
        raise ConfigError("peft.head = prototypes builds a classifier's head from class means, and these tasks are "
                          "regression; use peft.head meta or zero")
    return prototype_head(model.apply, _head_path(cfg), scale=cfg.peft.head_scale)


def _head_path(cfg: C.Config) -> str:
    """Where the model's head lives: under the base of a PEFT model, else at the top."""
    return "base.head" if cfg.peft.method != "none" else "head"


def settled(cfg: C.Config) -> C.Config:
    """``cfg`` with the choices that depend on this machine's files fixed, so that a run records what it used:
    Omniglot's ``protocol: auto`` becomes "standard" (both zips present) or "alphabets" (the background zip), and a
    relative data, encoder, base or init path becomes absolute (eval or --resume from another folder would
    otherwise read other files)."""
    def absolute(v):
        return str(Path(v).expanduser().resolve()) if v and Path(v).expanduser().exists() else v

    t = cfg.tasks
    if t.dataset == "omniglot" and t.protocol == "auto":
        from reptile_fn.tasks.omniglot import resolve_protocol

        t = dataclasses.replace(t, protocol=resolve_protocol("auto", t.data_dir))
    return dataclasses.replace(
        cfg, tasks=dataclasses.replace(t, path=absolute(t.path), test_path=absolute(t.test_path)),
        model=dataclasses.replace(cfg.model, encoder=absolute(cfg.model.encoder)), init=absolute(cfg.init),
        peft=dataclasses.replace(cfg.peft, base=cfg.peft.base if cfg.peft.base in peft_setup.BASES else absolute(cfg.peft.base)))


def trainable_predicate(patterns: tuple[str, ...]) -> PathPredicate | None:
    return None if tuple(patterns) == ("*",) else T.match(patterns)


def _families(cfg: C.Config):
    t = cfg.tasks
    return make_distribution(t.families, k_shot=t.k_shot, query_size=t.query_size, num_train_tasks=t.num_train_tasks,
                             seed=cfg.seed)


def _encoder(cfg: C.Config):
    """(encoder tree, its config, tokenizer) for a text run, else None."""
    if C.model_kind(cfg) != "text":
        return None
    from reptile_fn.text.encoder import load_encoder

    return load_encoder(cfg.model.encoder)


def make_tasks(cfg: C.Config, *, tokenizer=None) -> Sampler:
    """The config's task sampler (``tasks.dataset``): meta-training episodes and held-out ones."""
    t = cfg.tasks
    episode = dict(n_way=t.n_way, k_shot=t.k_shot, query_size=t.query_size)
    if t.dataset == "omniglot":
        from reptile_fn.tasks.omniglot import make_omniglot

        return make_omniglot(t.data_dir, **episode, test_split=t.test_split, protocol=t.protocol, seed=cfg.seed)
    if t.dataset == "clinc150":
        from reptile_fn.tasks.text import make_text_tasks

        test_split = "banking77" if t.test_split == "banking77" else f"clinc150:{t.test_split}"
        return make_text_tasks(t.data_dir, **episode, test_split=test_split, seed=cfg.seed, split_by=t.split_by,
                               tokenizer=tokenizer, train_within_group=t.train_within_group,
                               test_within_group=t.test_within_group)
    if t.dataset == "images":
        from reptile_fn.tasks.images import make_image_tasks

        return make_image_tasks(t.path, **episode, image_size=cfg.model.image_size, channels=cfg.model.channels,
                                train_split="all" if t.test_split == "all" else "train", test_split=t.test_split,
                                seed=cfg.seed, val=t.val_fraction, test=t.test_fraction, invert=t.invert,
                                resample=t.resample)
    if t.dataset == "csv":
        from reptile_fn.tasks.csv import make_csv_tasks

        return make_csv_tasks(t.path, **episode, train_split="all" if t.test_split == "all" else "train",
                              test_split=t.test_split, seed=cfg.seed, val=t.val_fraction,
                              test=t.test_fraction, text_column=t.text_column, label_column=t.label_column,
                              group_column=t.group_column, split_column=t.split_column, test_path=t.test_path,
                              tokenizer=tokenizer, train_within_group=t.train_within_group,
                              test_within_group=t.test_within_group)
    return _families(cfg)


def make_model(cfg: C.Config, in_dim, out_dim: int, encoder=None) -> Model:
    """The model a config's data set takes (``config.model_kind``), for inputs of ``in_dim`` and ``out_dim`` outputs."""
    kind = C.model_kind(cfg)
    if kind == "conv4":
        return conv4(tuple(in_dim), out_dim, filters=cfg.model.filters, norm=cfg.model.norm,
                     conv_impl=cfg.model.conv_impl)
    if kind == "text":
        from reptile_fn.text.encoder import text_classifier

        tree, enc_config, _ = encoder or _encoder(cfg)
        return text_classifier(tree, enc_config, out_dim, normalize=cfg.model.normalize)
    return mlp(in_dim, out_dim, hidden=cfg.model.hidden, depth=cfg.model.depth, activation=cfg.model.activation)


def _meta_step(cfg: C.Config, model: Model, loss, inner: InnerLoop, meta_trainable, reduce: Reduce) -> MetaStep:
    """The configured algorithm's meta-step (wrapped for AdaLoRA's rank allocation)."""
    defaults = DEFAULTS[cfg.algorithm]
    outer_lr = defaults["outer_lr"] if cfg.outer_lr is None else cfg.outer_lr
    schedule = optim.linear_schedule(outer_lr, cfg.outer_lr_final, cfg.meta_iterations)
    outer = optim.make(cfg.outer_optimizer or defaults["outer_optimizer"], schedule)
    options = {"meta_trainable": meta_trainable, "reduce": reduce}
    if cfg.inner_state == "persistent":
        options["persistent_inner_state"] = True
    adalora = cfg.peft.method == "adalora"
    meta = ALGORITHMS[cfg.algorithm](model.apply, loss, inner, outer, compiled=not adalora, **options)
    if not adalora:
        return meta
    from reptile_fn.peft import ranks
    from reptile_fn.peft.adalora import with_rank_allocation

    initial = sum(ranks(model.init(mx.random.key(0))["adapter"]).values())  # shapes only; nothing is trained
    n, p = cfg.meta_iterations, cfg.peft
    return with_rank_allocation(meta, target_rank=p.target_rank or max(initial // 2, 1), total_steps=n,
                                init_warmup=int(p.rank_warmup * n), final_warmup=int(p.rank_final * n))


# --- a saved run ---------------------------------------------------------------------------------

def load(checkpoint_path: str | Path, overrides: list[str] = (), *, with_tasks: bool = True,
         data: str | Path | None = None) -> tuple[Run, dict, dict, int]:
    """Rebuild a saved run: ``(run, params, state, iteration)``.

    ``checkpoint_path`` may also name a shipped initialization (``reptile_fn.pretrained``), e.g.
    ``omniglot-5w1s``. ``overrides`` (``key=value``) change where evaluation looks, e.g.
    ``tasks.data_dir`` or ``tasks.test_split``. ``with_tasks=False`` builds the model without the run's
    data (``run.tasks`` is None): enough to adapt it to new examples. ``data``: evaluate on this folder of
    images or CSV instead, every class held out (``own_data_overrides``).
    """
    from reptile_fn import pretrained

    checkpoint_path = pretrained.resolve(checkpoint_path)
    arrays, meta = checkpoint.load(checkpoint_path)
    if "config" not in meta:
        raise CheckpointError(f"{checkpoint_path} has no run config in its metadata; it was not written by "
                              "`reptile-fn train`")
    cfg = trained = C.from_dict(meta["config"], source=str(checkpoint_path), stored=True)
    edits = [] if pretrained.is_shipped(checkpoint_path) else config_edits(checkpoint_path.parent, cfg)
    if edits:  # a hand edit that changes nothing would otherwise look as if it had
        warnings.warn(f"{checkpoint_path.parent / CONFIG} differs from the run's config ({', '.join(edits[:4])}), which "
                      "its checkpoint holds and this command uses; pass a change with --set KEY=VALUE instead")
    stored_way = cfg.tasks.n_way
    if data is not None:
        fixed = own_data_overrides(cfg, stored_shapes(cfg, arrays, meta), data)
        for item in overrides:  # the input size is the model's: --data's images are resized to the run's
            key = item.split("=", 1)[0].strip()
            ours = next((o for o in fixed if o.startswith(key + "=")), None)
            if key in ("model.image_size", "model.channels") and ours is not None:
                raise ConfigError(f"--set {item}: with --data, {key} is the run's ({ours.split('=', 1)[1]}), since its "
                                  "model was built for that input and --data's images are converted to it; drop the --set")
        overrides = fixed + list(overrides)
    if overrides:
        stored, cfg = cfg, C.with_overrides(cfg, overrides)
        if data is None:
            C.checks.same_split(stored, cfg, f"evaluating {checkpoint_path} with {' '.join(overrides)}")
            if idle := C.checks.training_only(stored, cfg):
                warnings.warn(f"--set {', '.join(idle)}: only meta-training reads {'it' if len(idle) == 1 else 'them'}, "
                              "and this run is trained; the run's own value is used and recorded")
                cfg = C.with_overrides(cfg, [f"{k}={json.dumps(C.get(stored, k))}" for k in idle])
    if data is None and with_tasks and cfg.tasks.dataset in ("images", "csv") and cfg.tasks.path == trained.tasks.path \
            and cfg.tasks.path and not Path(cfg.tasks.path).expanduser().exists():
        raise DataError(f"{checkpoint_path} meta-trained on {cfg.tasks.path} (its tasks.path), which is not there any "
                        "more; if it moved, pass --set tasks.path=NEW_PLACE, or score the run on other data with --data")
    run = build(cfg, shapes=None if with_tasks else stored_shapes(cfg, arrays, meta))
    if data is not None and run.tasks is not None:  # the training data where this command looks for data (--data-dir)
        _check_held_out(dataclasses.replace(trained, tasks=dataclasses.replace(
            trained.tasks, data_dir=cfg.tasks.data_dir or trained.tasks.data_dir)), run.tasks, data)
    fresh = None  # a head every task rebuilds from its support set (prototypes) evaluates at any n_way
    if cfg.peft.head == "prototypes" and cfg.tasks.n_way != stored_way:
        fresh = T.match(f"*{_head_path(cfg)}.*")
    try:
        params = checkpoint.restore(arrays, "params", run.rebuilt_init, source=str(checkpoint_path), fresh=fresh)
        state = checkpoint.restore(arrays, "state", run.meta.init(params), source=str(checkpoint_path), fresh=fresh)
    except CheckpointError as e:  # the file is whole (it loaded): what changed is the model the --set built
        if cfg.tasks.n_way != stored_way and ".head." in str(e):  # a meta-learned head: its width is the run's way
            raise CheckpointError(
                f"{checkpoint_path} was meta-trained {stored_way}-way: its head has {stored_way} outputs, so it scores "
                f"{stored_way}-way episodes only, not tasks.n_way={cfg.tasks.n_way}; score it on data of {stored_way} "
                "or more classes, or label data of any number of classes with `reptile-fn adapt` (it uses or widens "
                "the head)") from None
        changed = [o for o in overrides if not o.startswith(("tasks.data_dir=", "tasks.test_split="))]
        raise (CheckpointError(f"{e} (after {' '.join(changed)}: the run was trained without them; drop the --set "
                               "of how it was built)") if changed else e) from None
    require_finite(params, checkpoint_path)
    return run, params, state, checked_iteration(meta.get("iteration", 0), trained, checkpoint_path)  # the run's own


def _check_held_out(trained: C.Config, held: Sampler, data) -> None:
    """A ConfigError if classes of ``--data`` are a quarter or more items the run meta-trained on (``tasks.overlap``);
    a note when the training data is not on this machine to compare with (a run from elsewhere)."""
    from reptile_fn.errors import ReptileFnError
    from reptile_fn.tasks.overlap import class_names, seen_classes

    if trained.tasks.dataset not in ("omniglot", "images", "csv", "clinc150"):
        return
    try:
        encoder = _encoder(trained)
        seen = seen_classes(make_tasks(trained, tokenizer=encoder[2] if encoder else None), held)
    except ReptileFnError as e:
        from reptile_fn import progress

        progress.note(f"warning: --data was not compared with the run's training data, which is not here ({e}): that its "
                      "classes are held out is up to you")
        return
    if seen:
        items = "sentences" if trained.tasks.dataset in ("csv", "clinc150") else "images"
        shown = ", ".join(f"{n!r} ({100 * f:.0f}%)" for n, f in seen[:4]) + (" ..." if len(seen) > 4 else "")
        verb, total = "is" if len(seen) == 1 else "are", len(class_names(held, "test"))
        raise ConfigError(f"--data {data}: {len(seen)} of its {total} classes {verb} at least a quarter {items} this "
                          f"run meta-trained on ({shown}), so not held out; remove them from --data (or score the run's "
                          "own held-out classes: eval without --data)")
