"""The meta-training loop: sampling, meta-steps, logging, held-out evaluation, checkpoints, resume.

A run directory holds ``config.yaml``, ``checkpoint.safetensors`` (latest good parameters and
algorithm state), ``metrics.jsonl`` (one JSON object per log or eval event) and, at the end,
``summary.json`` (few-shot results of the meta-learned init against a random init).

Randomness: ``seed`` fixes the initialization, the training-task pool, one key per meta-iteration
and the evaluation episodes, so a resumed run equals an uninterrupted one.

Under ``mlx.launch`` every process runs this loop on its block of each meta-batch
(``reptile_fn.distributed``); only rank 0 writes files, logs and evaluates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import mlx.core as mx
import numpy as np

from reptile_fn import checkpoint, distributed
from reptile_fn import config as C
from reptile_fn import tree as T
from reptile_fn.algorithms import ALGORITHMS, DEFAULTS, MetaStep
from reptile_fn.algorithms.maml import ANIL_TRAINABLE
from reptile_fn.baselines import Init, make_baselines, pretrain, steps_to_reach
from reptile_fn.errors import CheckpointError, ConfigError, TrainingDivergedError
from reptile_fn.evaluate import few_shot_curve
from reptile_fn.inner import adapt
from reptile_fn.losses import accuracy, cross_entropy, mse
from reptile_fn.models import Model, conv4, mlp
from reptile_fn.tasks import make_distribution

CHECKPOINT = "checkpoint.safetensors"
ADAPTER_DIR = "adapter"  # PEFT runs: adapters.safetensors + adapter_config.json
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


class Setup(NamedTuple):
    """Everything a run is built from, derived from a Config alone."""

    cfg: C.Config
    tasks: object  # TaskDistribution or OmniglotTasks: sample_train / sample_test
    model: Model
    loss: Callable
    metric: Callable | None  # accuracy for classification, None for regression
    meta: MetaStep
    inner_kwargs: dict  # how the inner loop adapts at evaluation
    sample_train: Callable  # (key, n_tasks) -> Episode for meta-training (train_shots support examples)
    initial_params: Callable  # (key) -> the starting parameters (PEFT: the pretrained base + a fresh adapter)
    peft: object = None  # peft.Peft for PEFT runs, else None
    meta_trainable: object = None  # predicate of what the outer loop learns (None: as the algorithm decides)
    eval_split: Callable | None = None  # how evaluation chunks episodes (evaluate.per_episode_curves's split)


class Keys(NamedTuple):
    init: mx.array
    train: mx.array
    eval_during: mx.array
    eval_final: mx.array
    random_init: mx.array


def run_keys(seed: int) -> Keys:
    return Keys(*mx.random.split(mx.random.key(seed), 5))


def rebuilt_init(s: Setup) -> dict:
    """The model's init from the run's seed: the tree a checkpoint is restored into, and the reference it is
    saved against (leaves still equal to it, such as a frozen pretrained encoder, are stored as digests)."""
    return s.model.init(run_keys(s.cfg.seed).init)


def trainable_predicate(patterns: tuple[str, ...]):
    return None if tuple(patterns) == ("*",) else T.match(patterns)


def setup(cfg: C.Config, group=None) -> Setup:
    """Build tasks, model, loss and the compiled meta-step for a config.

    ``group``: the ``mx.distributed`` group the meta-step averages over (None: one process).
    """
    t = cfg.tasks
    if t.dataset == "omniglot":
        from reptile_fn.tasks.omniglot import make_omniglot

        tasks = make_omniglot(t.data_dir, n_way=t.n_way, k_shot=t.k_shot, query_size=t.query_size,
                              test_split=t.test_split, protocol=t.protocol, seed=cfg.seed)
        train_tasks = dataclasses.replace(tasks, k_shot=t.train_shots) if t.train_shots else tasks
        model = conv4(tasks.in_dim, tasks.out_dim, filters=cfg.model.filters, norm=cfg.model.norm,
                      conv_impl=cfg.model.conv_impl)
    elif t.dataset == "clinc150":
        from reptile_fn.tasks.text import make_text_tasks
        from reptile_fn.text.encoder import load_encoder, text_classifier

        encoder, enc_config, tokenizer = load_encoder(cfg.model.encoder)
        test_split = "banking77" if t.test_split == "banking77" else f"clinc150:{t.test_split}"
        tasks = make_text_tasks(t.data_dir, n_way=t.n_way, k_shot=t.k_shot, query_size=t.query_size,
                                test_split=test_split, seed=cfg.seed, split_by=t.split_by, tokenizer=tokenizer)
        train_tasks = dataclasses.replace(tasks, k_shot=t.train_shots) if t.train_shots else tasks
        model = text_classifier(encoder, enc_config, t.n_way, normalize=cfg.model.normalize)
    else:
        tasks = make_distribution(t.families, k_shot=t.k_shot, query_size=t.query_size,
                                  num_train_tasks=t.num_train_tasks, seed=cfg.seed)
        train_tasks = (make_distribution(t.families, k_shot=t.train_shots, query_size=t.query_size,
                                         num_train_tasks=t.num_train_tasks, seed=cfg.seed) if t.train_shots else tasks)
        model = mlp(tasks.in_dim, tasks.out_dim, hidden=cfg.model.hidden, depth=cfg.model.depth,
                    activation=cfg.model.activation)
    classification = tasks.kind == "classification"
    loss = cross_entropy if classification else mse
    patterns = ANIL_TRAINABLE if cfg.algorithm == "anil" and tuple(cfg.trainable) == ("*",) else cfg.trainable
    trainable = trainable_predicate(patterns)
    initial_params, pf, meta_trainable, extra = model.init, None, None, {}
    if cfg.peft.method != "none":
        from reptile_fn import peft

        p = cfg.peft
        pf = peft.peft_model(model, method=p.method, targets=p.targets, rank=p.rank, scale=p.scale)
        inner_pat, meta_pat = peft.patterns(p.method, train_head=p.train_head, meta_learn_base=p.meta_learn_base,
                                            reptile=cfg.algorithm == "reptile", meta_learn_head=p.head == "meta")
        if cfg.algorithm == "anil":
            inner_pat = (peft.HEAD,)
        pf = pf._replace(inner=inner_pat, meta=meta_pat)
        trainable, meta_trainable = T.match(inner_pat), T.match(meta_pat)
        base_model = model
        model = pf.model
        initial_params = _peft_initial_params(cfg, pf, base_model, loss, tasks)
        extra["meta_trainable"] = meta_trainable  # Reptile: what adapts but is not meta-learned (a zero head) stays
    defaults = DEFAULTS[cfg.algorithm]
    betas = tuple(cfg.inner_adam_betas)
    inner = dict(optimizer=cfg.inner_optimizer, trainable=trainable,
                 inner_batch_size=cfg.eval.inner_batch_size or cfg.inner_batch_size,
                 adam_betas=betas, transductive=cfg.eval.transductive)
    meta = ALGORITHMS[cfg.algorithm](
        model.apply, loss, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
        outer_lr=defaults["outer_lr"] if cfg.outer_lr is None else cfg.outer_lr,
        outer_lr_final=cfg.outer_lr_final, meta_iterations=cfg.meta_iterations,
        inner_optimizer=cfg.inner_optimizer, inner_batch_size=cfg.inner_batch_size, inner_adam_betas=betas,
        outer_optimizer=cfg.outer_optimizer or defaults["outer_optimizer"], trainable=trainable, **extra,
        **({"persistent_inner_state": True} if cfg.inner_state == "persistent" else {}),
        **({"group": group} if group is not None else {}),
    )
    if cfg.peft.method == "adalora":
        from reptile_fn.peft.adalora import with_rank_allocation

        initial = sum(peft_ranks_initial(model).values())
        n = cfg.meta_iterations
        meta = with_rank_allocation(meta, target_rank=cfg.peft.target_rank or max(initial // 2, 1), total_steps=n,
                                    init_warmup=int(cfg.peft.rank_warmup * n), final_warmup=int(cfg.peft.rank_final * n))
    eval_split = None
    if cfg.model.kind == "text":  # episodes of similar length, cut to it, two at a time (tasks.text.EVAL_CHUNK),
        from reptile_fn.tasks.text import by_length  # sentences packed into shared rows unless steps take mini-batches

        eval_split = by_length if (cfg.eval.inner_batch_size or cfg.inner_batch_size) is None else partial(by_length, pack=False)
    return Setup(cfg, tasks, model, loss, accuracy if classification else None, meta, inner, train_tasks.sample_train,
                 initial_params, pf, meta_trainable, eval_split)


def peft_ranks_initial(model: Model) -> dict[str, int]:
    """Per-weight ranks of a fresh adapter (shapes only; nothing is trained)."""
    from reptile_fn.peft import ranks

    return ranks(model.init(mx.random.key(0))["adapter"])


def _peft_initial_params(cfg: C.Config, pf, base_model: Model, loss, tasks) -> Callable:
    """(key) -> {"base": the configured base, "adapter": a fresh adapter}; pretraining runs only when called."""
    p = cfg.peft

    def initial(key: mx.array):
        k_base, k_adapter = mx.random.split(key)
        base = load_base(cfg, base_model, loss, tasks, k_base)
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


def load_base(cfg: C.Config, base_model: Model, loss, tasks, key: mx.array):
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
    arrays, meta = checkpoint.load(p.base)
    if meta.get("config", {}).get("peft", {}).get("method", "none") != "none":
        raise ConfigError(f"peft.base = {p.base} is itself a PEFT run; point at a plain run's checkpoint")
    return checkpoint.restore(arrays, "params", base_model.init(key), source=p.base)


def evaluate_init(s: Setup, params, key: mx.array, episodes: int, steps: int | None = None, inner_lr=None,
                  trainable="run", record: list[int] | None = None, inner_opt=None) -> dict:
    """Few-shot curve of ``params`` on ``episodes`` held-out episodes drawn with ``key``.

    ``trainable``: which leaves adapt: ``"run"`` as the run's inner loop (ANIL: the head), ``None`` all.
    ``record``: the steps at which the query set is scored (default: ``evaluate.recorded_steps``); scoring
    costs more than a step when evaluation is not transductive, so a table that needs only the last step says so.
    ``inner_opt``: ``(opt_state, t0)`` to start the inner optimizer from (``MetaStep.inner_opt``), else fresh.
    """
    cfg = s.cfg
    sample_key, adapt_key = mx.random.split(key)
    batch = s.tasks.sample_test(sample_key, episodes)
    # learned per-parameter rates (Meta-SGD) win; otherwise eval.inner_lr, then the given or training rate
    lr = inner_lr if isinstance(inner_lr, dict) else (cfg.eval.inner_lr or inner_lr or cfg.inner_lr)
    return few_shot_curve(s.model.apply, s.loss, params, batch, inner_lr=lr,
                          steps=cfg.eval.inner_steps if steps is None else steps, metric=s.metric,
                          key=adapt_key, record=sorted(record) if record else None, **_inner_kwargs(s, trainable),
                          **(dict(opt_state=inner_opt[0], t0=inner_opt[1]) if inner_opt is not None else {}),
                          split=s.eval_split)


def _inner_kwargs(s: Setup, trainable) -> dict:
    """The run's inner-loop settings, with ``trainable`` replaced unless it is ``"run"``."""
    return dict(s.inner_kwargs, **({"trainable": trainable} if trainable != "run" else {}))


PEFT_BASELINES = ("lora0", "base-full", "base-head", "random")


def default_baselines(s: Setup) -> tuple[str, ...]:
    return ("lora0", "base-full", "base-head") if s.peft is not None else ("random", "transfer", "head")


def baseline_inits(s: Setup, names) -> dict:
    """The named baselines for this run, deterministic given its seed.

    Plain runs: ``baselines.BASELINES`` (random, transfer, head). PEFT runs start from the run's own
    base: ``lora0`` (a fresh adapter, B = 0, adapted like the run), ``base-full`` (full fine-tuning of
    the base), ``base-head`` (its head only), ``random`` (a random base, fully fine-tuned).
    """
    keys = run_keys(s.cfg.seed)
    if s.peft is not None:
        unknown = [n for n in names if n not in PEFT_BASELINES]
        if unknown:
            raise ConfigError(f"unknown baseline {unknown[0]!r} for a PEFT run; choose from {', '.join(PEFT_BASELINES)} "
                              "(base-full / base-head fine-tune the run's pretrained base)")
        from reptile_fn import peft

        start = s.initial_params(keys.init)
        out = {}
        for name in names:
            if name == "lora0":
                out[name] = Init(start, s.inner_kwargs["trainable"])
            elif name == "base-full":
                out[name] = Init(start, T.match("base.*"))
            elif name == "base-head":
                out[name] = Init(start, T.match(peft.HEAD))
            else:
                out[name] = Init(s.model.init(keys.random_init), T.match("base.*"))
        return out
    return make_baselines(names, s.model, s.loss, s.tasks, random_key=keys.random_init,
                          transfer_key=mx.random.split(keys.eval_final, 4)[3])


def final_evaluation(s: Setup, params, state, episodes: int | None = None, steps: int | None = None,
                     baselines: tuple[str, ...] | dict | None = None, speed_steps: int | None = None) -> dict:
    """The meta-learned init vs baselines on the same held-out episodes (deterministic given the seed).

    Every init adapts with the same inner loop; the meta-learned one at the algorithm's inner learning
    rate (Meta-SGD: its learned per-parameter rates), the baselines at ``inner_lr`` (or ``eval.inner_lr``).
    With ``speed_steps``, curves run that long and ``speed`` says how many steps each init needs to reach
    the meta-learned init's result after ``steps`` (see ``adaptation_speed``). ``baselines`` are names,
    or the ``baseline_inits`` already built (so a caller that also draws figures pretrains once).
    """
    keys = run_keys(s.cfg.seed)
    n = episodes or s.cfg.eval.episodes
    k = s.cfg.eval.inner_steps if steps is None else steps
    horizon = max(k, speed_steps or 0)
    learned_lr = s.meta.inner_lr(state)
    inits = {"meta": evaluate_init(s, params, keys.eval_final, n, horizon, inner_lr=learned_lr,
                                   inner_opt=s.meta.inner_opt(state))}
    # Baselines adapt every leaf (random, transfer) or the head (head), whatever the run adapts.
    if baselines is None:  # the final evaluation of `train`: random init, or for PEFT a fresh adapter on the base
        baselines = ("lora0",) if s.peft is not None else ("random",)
    base = baselines if isinstance(baselines, dict) else baseline_inits(s, baselines)
    for name, b in base.items():
        inits[name] = evaluate_init(s, b.params, keys.eval_final, n, horizon, trainable=b.trainable)
    out = {
        "kind": s.tasks.kind,
        "metric": "accuracy" if s.metric is not None else "mse",
        "k_shot": s.cfg.tasks.k_shot,
        "inner_lr": s.cfg.eval.inner_lr or s.cfg.inner_lr,
        "inner_lr_learned": isinstance(learned_lr, dict),
        "inits": inits,
    }
    if speed_steps:
        out["speed"] = adaptation_speed(out, k)
        ms = {"meta": _ms_per_step(s, params, learned_lr, "run")}
        for name, b in base.items():
            ms[name] = _ms_per_step(s, b.params, None, b.trainable)
        for name, row in out["speed"]["inits"].items():
            row["ms_per_step"] = round(ms[name], 4)
            row["ms_to_target"] = round(ms[name] * row["steps"], 3)
    return out


def _ms_per_step(s: Setup, params, inner_lr, trainable, episodes: int = 64, steps: int = 10) -> float:
    """Wall-clock milliseconds of one inner step on one task (compiled, vmapped over ``episodes`` tasks)."""
    import time as _time

    batch = s.tasks.sample_test(mx.random.key(0), episodes)
    lr = inner_lr if inner_lr is not None else (s.cfg.eval.inner_lr or s.cfg.inner_lr)
    inner = _inner_kwargs(s, trainable)
    inner.pop("transductive")

    def one(p, sx, sy, key):
        return adapt(s.model.apply, s.loss, p, (sx, sy), lr=lr, steps=steps, key=key, **inner)[0]

    run = mx.compile(mx.vmap(one, in_axes=(None, 0, 0, 0)))
    keys = mx.random.split(mx.random.key(1), episodes)
    mx.eval(run(params, batch.support_x, batch.support_y, keys))  # compile
    t0 = _time.perf_counter()
    for _ in range(3):
        mx.eval(run(params, batch.support_x, batch.support_y, keys))
    return (_time.perf_counter() - t0) / 3 / steps / episodes * 1000


def adaptation_speed(ev: dict, k: int) -> dict:
    """Inner steps each init needs to reach the meta-learned init's mean after ``k`` steps, and the ratio to meta's.

    All inits run the same inner loop on the same model, so the wall-clock ratio is close to the step
    ratio (head-only steps are cheaper); ``final_evaluation`` adds the measured ms per step and to the
    target. A baseline that never reaches the target within the horizon gives a lower bound (``reached: false``).
    """
    accuracy = ev["metric"] == "accuracy"
    key = "metric" if accuracy else "loss"
    steps = ev["inits"]["meta"]["steps"]
    meta_curve = ev["inits"]["meta"][key]["mean"]
    target = meta_curve[steps.index(k)]
    first = steps_to_reach(meta_curve, target, higher_is_better=accuracy)
    t_meta = max(steps[first], 1)
    horizon = steps[-1]
    rows = {}
    for name, curve in ev["inits"].items():
        i = steps_to_reach(curve[key]["mean"], target, higher_is_better=accuracy)
        t = steps[i] if i is not None else horizon  # the first recorded step at or past the target
        rows[name] = {"steps": t, "reached": i is not None, "ratio": t / t_meta}
    return {"target": target, "target_from": f"meta after {k} steps", "metric": "accuracy" if accuracy else "mse",
            "horizon": horizon, "meta_steps": t_meta, "inits": rows}


def sine_predictions(s: Setup, inits: dict, key: mx.array, steps=(0, 1, 10)) -> dict:
    """One held-out sine task: the true curve, its support points, and each init's fit after t steps.

    ``inits[name] = (params, inner_lr, trainable)``. Returns arrays ready for ``plots.sine_fit``.
    """
    from reptile_fn.tasks import sine_curve

    task_key, data_key = mx.random.split(key)
    # the first of 16 held-out tasks with amplitude >= 2.5, so the figure shows a visible curve
    candidates = s.tasks.sample_test_tasks(task_key, 16)
    amplitude = np.array(s.tasks.task_params(candidates)["sine"]["amplitude"])
    pick = int(np.argmax(amplitude >= 2.5)) if (amplitude >= 2.5).any() else 0
    tasks = type(candidates)(candidates.family_ids[pick:pick + 1], candidates.keys[pick:pick + 1])
    episode = s.tasks.episodes(tasks, data_key)
    params_sine = {k: v[0] for k, v in s.tasks.task_params(tasks)["sine"].items()}
    x_plot = mx.linspace(-5, 5, 200)[:, None]
    support = (episode.support_x[0], episode.support_y[0])
    preds = {}
    for name, (params, lr, trainable) in inits.items():
        _, _, seen = adapt(s.model.apply, s.loss, params, support, lr=lr, steps=max(steps),
                           optimizer=s.cfg.inner_optimizer, trainable=trainable,
                           observe=lambda p: s.model.apply(p, x_plot)[:, 0])
        preds[name] = {t: np.array(seen[t]) for t in steps}
    return {"x_plot": np.array(x_plot[:, 0]), "y_true": np.array(sine_curve(params_sine, x_plot)[:, 0]),
            "support": (np.array(support[0][:, 0]), np.array(support[1][:, 0])), "predictions": preds}


def write_figures(s: Setup, params, state, ev: dict, out_dir: Path, metrics_path: Path | None = None,
                  baselines: dict | None = None) -> list[Path]:
    """curves.png (every init), training.png (if a metrics.jsonl is given) and, for sine, sine.png.

    ``baselines``: the ``baseline_inits`` used for ``ev``; the sine figure shows its transfer model.
    """
    from reptile_fn import plots

    out = [plots.adaptation_curves(ev, out_dir / "curves.png")]
    if metrics_path is not None and metrics_path.exists():
        out.append(plots.training_curve(metrics_path, out_dir / "training.png"))
    if s.cfg.tasks.dataset == "synthetic" and s.cfg.tasks.families == ("sine",):
        keys = run_keys(s.cfg.seed)
        inits = {"meta-learned": (params, s.meta.inner_lr(state), s.inner_kwargs["trainable"])}
        if "transfer" in ev["inits"]:
            transfer = (baselines or baseline_inits(s, ("transfer",)))["transfer"]
            inits["pretrained (transfer)"] = (transfer.params, s.cfg.eval.inner_lr or s.cfg.inner_lr, None)
        fit = sine_predictions(s, inits, mx.random.split(keys.eval_final, 4)[2])
        out.append(plots.sine_fit(fit["x_plot"], fit["y_true"], fit["support"], fit["predictions"], out_dir / "sine.png"))
    return out


def format_speed(speed: dict) -> str:
    """Steps (and the ratio to the meta-learned init) to reach the meta-learned init's K-step result."""
    unit = "% accuracy" if speed["metric"] == "accuracy" else " MSE"
    value = 100 * speed["target"] if speed["metric"] == "accuracy" else speed["target"]
    lines = [f"adaptation speed: inner steps to reach {value:.2f}{unit} ({speed['target_from']}), "
             f"horizon {speed['horizon']} steps"]
    for name, row in speed["inits"].items():
        steps = f"{row['steps']}" if row["reached"] else f">{row['steps']}"
        ratio = f"{row['ratio']:.1f}x" if row["reached"] else f">{row['ratio']:.1f}x"
        ms = f"   {'>' if not row['reached'] else ''}{row['ms_to_target']:.2f} ms per task" if "ms_to_target" in row else ""
        lines.append(f"  {name:<10}{steps:>6} steps   {ratio:>7} the meta-learned init's{ms}")
    return "\n".join(lines)


def train(
    cfg: C.Config | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Meta-train (or resume) into ``out_dir``; returns the summary dict (also written as JSON).

    ``stop_at`` ends early after that meta-iteration (with a checkpoint), as an interruption would.
    Launched by ``mlx.launch``, each process adapts its block of every meta-batch and only rank 0
    writes files and output; the summary of another rank has no evaluation.
    """
    w = distributed.world()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    if resume:
        cfg, params, state, start, window, n_window = _resume(cfg, ckpt_path)
        block = distributed.shard(cfg.meta_batch_size, w)
        s = setup(cfg, w.group)
        reference = rebuilt_init(s)
        params = checkpoint.restore(params, "params", reference, source=str(ckpt_path))
        state = checkpoint.restore(state, "state", s.meta.init(params), source=str(ckpt_path))
        if w.is_main:
            _truncate_metrics(out / METRICS, start)
            log(f"resuming {out} at meta-iteration {start}/{cfg.meta_iterations}")
    else:
        if cfg is None:
            cfg = C.Config()
        if ckpt_path.exists():
            raise ConfigError(f"{out} already holds a run ({ckpt_path.name}); pass --resume to continue it "
                              "or choose another --out")
        block = distributed.shard(cfg.meta_batch_size, w)
        s = setup(cfg, w.group)
        params = s.initial_params(run_keys(cfg.seed).init)
        reference = rebuilt_init(s)
        state = s.meta.init(params)
        start, window, n_window = 0, {}, 0
        if w.is_main:
            out.mkdir(parents=True, exist_ok=True)
            _atomic_write(out / "config.yaml", C.dump(cfg))
            (out / METRICS).unlink(missing_ok=True)
    last_good = start if resume else None
    run = _Progress(params, state, start, window, n_window)

    def lost(reason: str) -> str:
        kept = (f"the last checkpoint ({ckpt_path}, meta-iteration {last_good}) is kept" if last_good is not None
                else "no checkpoint had been written yet")
        return (f"process {w.rank} of {w.size} lost contact with the others after meta-iteration {run.iteration} "
                f"({reason}); {kept}. Check that every process is alive and reachable, then relaunch all of them "
                "with --resume")

    waiting = contextlib.nullcontext
    if w.group is not None:
        waiting = distributed.Watchdog(
            distributed.peer_timeout(),
            lambda t: lost(f"no reply in {t:.0f} s; {distributed.PEER_TIMEOUT_ENV} sets the limit")).waiting
        with waiting():
            distributed.check_same(w, f"{C.dump(cfg)}\nstart: {start}", "config or checkpoint")

    keys = run_keys(cfg.seed)
    iteration_keys = mx.random.split(keys.train, cfg.meta_iterations)
    end = min(cfg.meta_iterations, stop_at) if stop_at is not None else cfg.meta_iterations

    @mx.compile
    def iteration(params, state, key):
        sample_key, step_key = mx.random.split(key)
        batch = s.sample_train(sample_key, cfg.meta_batch_size)
        if w.group is not None:
            # every process draws the whole meta-batch (pure in the key, a small share of a step's cost)
            # and adapts its own block, so P processes compute what one process computes
            batch = type(batch)(*(x[block] for x in batch))
        return s.meta.step(params, state, batch, step_key)

    def save(run: _Progress):
        if not bool(T.all_finite(run.params)):
            raise _diverged(cfg, run.iteration, ckpt_path if last_good is not None else None, last_good)
        if not w.is_main:
            return
        # The open log window travels with the checkpoint, so a resumed run logs the same means.
        window = {"count": run.n_window, "sums": {k: float(v) for k, v in run.window.items()}}
        checkpoint.save(ckpt_path, run.params, run.state,
                        {"config": C.to_dict(cfg), "iteration": run.iteration, "log_window": window},
                        reference=reference)
        if s.peft is not None:
            save_adapter_files(s, run.params, out / ADAPTER_DIR)

    metrics_file = open(out / METRICS if w.is_main else os.devnull, "a")
    t0 = time.perf_counter()
    bar = _progress(progress and w.is_main, start, cfg.meta_iterations)
    if w.group is not None and w.is_main:
        bar = _LineBar(log, cfg.meta_iterations) if not progress else bar
        log(f"{w.size} processes, {cfg.meta_batch_size // w.size} of each meta-batch's {cfg.meta_batch_size} "
            "tasks per process")
    try:
        for i in range(start, end):
            params, state, metrics = iteration(run.params, run.state, iteration_keys[i])
            window = metrics if not run.window else {k: run.window[k] + metrics[k] for k in metrics}
            if w.group is None:
                mx.async_eval(params, state, window)
            else:
                with waiting():  # a lost peer raises here, or (MLX 0.32) blocks until the watchdog ends it
                    mx.eval(params, state, window)
            run = _Progress(params, state, i + 1, window, run.n_window + 1)  # one assignment: Ctrl-C safe
            it = run.iteration
            if it % cfg.log_every == 0 or it == cfg.meta_iterations:
                record = {"iteration": it, **{k: float(v) / run.n_window for k, v in run.window.items()}}
                run = run._replace(window={}, n_window=0)
                if not bool(T.all_finite(params)) or not all(math.isfinite(v) for v in record.values()):
                    raise _diverged(cfg, it, ckpt_path if last_good is not None else None, last_good)
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()  # so that `tail -f metrics.jsonl` follows a long run
                bar.update(it, record)
            if it % cfg.eval.every == 0 and it != cfg.meta_iterations:
                # every process evaluates (rank 0 records it), so none waits on another's evaluation
                curve = evaluate_init(s, params, keys.eval_during, cfg.eval.during_training_episodes,
                                      inner_lr=s.meta.inner_lr(state), inner_opt=s.meta.inner_opt(state))
                metrics_file.write(json.dumps({"iteration": it, "eval": _final_point(curve)}) + "\n")
                metrics_file.flush()
            if it % cfg.checkpoint_every == 0 or it == end:
                metrics_file.flush()
                save(run)
                last_good = it
    except KeyboardInterrupt:
        metrics_file.flush()
        if run.iteration > start and bool(T.all_finite(run.params)) and w.is_main:
            save(run)
            log(f"\ninterrupted: checkpoint saved at meta-iteration {run.iteration}; continue with --resume")
        raise
    except RuntimeError as e:
        if not distributed.lost_peer(e):
            raise
        raise distributed.DistributedError(lost(str(e))) from e
    finally:
        bar.close()
        metrics_file.close()
    done = end - start
    seconds = time.perf_counter() - t0

    summary = {
        "run": str(out),
        "iteration": end,
        "meta_iterations": cfg.meta_iterations,
        "seconds": round(seconds, 3),
        "meta_steps_per_s": float(f"{done / seconds:.3g}") if done else None,
        "examples_per_s": float(f"{done * _examples_per_step(s) / seconds:.3g}") if done else None,
        "processes": w.size,
        "rank": w.rank,
        "config": C.to_dict(cfg),
    }
    if not w.is_main:
        return summary
    if s.peft is not None:
        summary["peft"] = peft_summary(s, run.params)
    if end == cfg.meta_iterations:
        summary["eval"] = final_evaluation(s, run.params, run.state)
        _atomic_write(out / SUMMARY, json.dumps(summary, indent=2))
    return summary


def _examples_per_step(s: Setup) -> int:
    """Support examples adapted per meta-step: meta-batch × (inner batch or support set) × inner steps."""
    cfg = s.cfg
    support = int(s.sample_train(mx.random.key(0), 1).support_x.shape[1])
    per_step = min(cfg.inner_batch_size or support, support)
    return cfg.meta_batch_size * per_step * cfg.inner_steps


def peft_summary(s: Setup, params) -> dict:
    """Method, per-weight ranks, and total / adapted / meta-learned parameter counts of a PEFT run."""
    from reptile_fn import peft

    counts = peft.counts(params, s.inner_kwargs["trainable"], s.meta_trainable)
    return {"method": s.cfg.peft.method, "ranks": peft.ranks(params.get("adapter", {})), **counts}


def save_adapter_files(s: Setup, params, directory: Path) -> None:
    """``adapters.safetensors`` + ``adapter_config.json``: the meta-learned leaves of a PEFT run, tied to its base."""
    from reptile_fn import peft

    p = s.cfg.peft
    learned = [path for path in T.paths(params) if s.meta_trainable(path)]
    config = {"method": p.method, "rank": p.rank, "scale": p.scale, "targets": list(p.targets),
              "ranks": peft.ranks(params.get("adapter", {})), "train_head": p.train_head, "meta_learn_base": p.meta_learn_base,
              "base_source": p.base if p.base != "pretrain" else
              f"pretrain (seed {s.cfg.seed}, families {list(p.base_families or s.cfg.tasks.families)}, "
              f"{p.base_pretrain_iterations} iterations)",
              "model": C.to_dict(s.cfg.model)}
    peft.save_adapters(directory, params, learned, config)


def stored_config(out_dir: str | Path) -> C.Config:
    """The config of the run in ``out_dir``, from its checkpoint's metadata."""
    return _resume(None, Path(out_dir) / CHECKPOINT)[0]


def load_run(checkpoint_path: str | Path, overrides: list[str] = ()) -> tuple[Setup, dict, dict, int]:
    """Rebuild the setup, parameters and algorithm state of a saved run: (setup, params, state, iteration).

    ``checkpoint_path`` may also name a shipped initialization (``reptile_fn.pretrained``), e.g. ``omniglot-5w1s``.

    ``overrides`` (``key=value``) change where evaluation looks, e.g. ``tasks.data_dir`` or ``tasks.test_split``.
    """
    from reptile_fn import pretrained

    checkpoint_path = pretrained.resolve(checkpoint_path)
    arrays, meta = checkpoint.load(checkpoint_path)
    if "config" not in meta:
        raise CheckpointError(f"{checkpoint_path} has no run config in its metadata; it was not written by `reptile-fn train`")
    cfg = C.from_dict(meta["config"], source=str(checkpoint_path))
    if overrides:
        cfg = C.with_overrides(cfg, overrides)
    s = setup(cfg)
    params = checkpoint.restore(arrays, "params", rebuilt_init(s), source=str(checkpoint_path))
    state = checkpoint.restore(arrays, "state", s.meta.init(params), source=str(checkpoint_path))
    return s, params, state, int(meta.get("iteration", 0))


def format_results(ev: dict, show_steps: tuple[int, ...] | None = None, max_step: int | None = None) -> str:
    """A plain-text table: one row per initialization, one column per inner-step count.

    Columns: 0, 1, 5 and ``max_step`` (default: the last) steps, plus the last step if the curves run longer.
    """
    metric = "metric" if ev["metric"] == "accuracy" else "loss"
    label = "query accuracy (%)" if metric == "metric" else "query MSE"
    scale = 100.0 if metric == "metric" else 1.0
    first = next(iter(ev["inits"].values()))
    steps = first["steps"]
    k_max = steps[-1] if max_step is None else max_step
    cols = [k for k in (show_steps or sorted({0, 1, 5, k_max, steps[-1]})) if k in steps]
    head = f"{'init':<10}" + "".join(f"{f'{k} steps':>18}" for k in cols)
    lines = [f"{label}, {first['episodes']} held-out episodes, k_shot={ev['k_shot']}, mean ± 95% CI", head]
    for name, curve in ev["inits"].items():
        at = [steps.index(k) for k in cols]
        cells = [f"{_num(scale * curve[metric]['mean'][i])} ± {_num(scale * curve[metric]['ci95'][i])}" for i in at]
        lines.append(f"{name:<10}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def compare_runs(runs: list[Path]) -> str:
    """Markdown: one row per (run, init) with the final few-shot results (eval/results.json if present)."""
    rows, header = [], None
    for run in runs:
        run = Path(run)
        source = run / "eval" / "results.json" if (run / "eval" / "results.json").exists() else run / SUMMARY
        if not source.exists():
            raise CheckpointError(f"{run} has no {SUMMARY} (or eval/results.json); train it to the end first")
        data = json.loads(source.read_text())
        ev = data.get("eval", data)
        cfg = data.get("config") or json.loads(json.dumps(C.to_dict(stored_config(run))))
        accuracy = ev["metric"] == "accuracy"
        key, scale = ("metric", 100.0) if accuracy else ("loss", 1.0)
        k = cfg["eval"]["inner_steps"]
        cols = [0, 1, 5, k]
        header = header or ("| run | algorithm | families | k_shot | init | " + " | ".join(f"{c} steps" for c in cols)
                            + " |\n|" + "---|" * (5 + len(cols)))
        for name, curve in ev["inits"].items():
            pos = {st: i for i, st in enumerate(curve["steps"])}
            cells = [f"{_num(scale * curve[key]['mean'][pos[c]])} ± {_num(scale * curve[key]['ci95'][pos[c]])}"
                     if c in pos else "" for c in cols]
            rows.append(f"| {run.name} | {cfg['algorithm']} | {', '.join(cfg['tasks']['families'])} | "
                        f"{cfg['tasks']['k_shot']} | {name} | " + " | ".join(cells) + " |")
    unit = "query accuracy (%) or MSE, mean ± 95% CI over held-out episodes"
    return f"{unit}\n\n{header}\n" + "\n".join(rows)


# --- helpers -------------------------------------------------------------------------------------

def _num(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 1e4 else f"{v:.1e}"


def _resume(cfg: C.Config | None, ckpt_path: Path):
    if not ckpt_path.exists():
        raise CheckpointError(f"nothing to resume: {ckpt_path} does not exist; start a run without --resume")
    arrays, meta = checkpoint.load(ckpt_path)
    if "config" not in meta or "iteration" not in meta:
        raise CheckpointError(f"{ckpt_path} has no run config/iteration in its metadata, so it cannot be resumed; "
                              "it was not written by `reptile-fn train`")
    stored = C.from_dict(meta["config"], source=str(ckpt_path))
    if cfg is not None and cfg != stored:
        diff = [k for k in C.leaf_keys() if C.get(stored, k) != C.get(cfg, k)]
        raise ConfigError(f"--resume: the config differs from the run's in {', '.join(diff)}; "
                          "resume without --config/--set, or start a new run in another --out")
    lw = meta.get("log_window") or {"count": 0, "sums": {}}
    window = {k: mx.array(v, dtype=mx.float32) for k, v in lw["sums"].items()}
    return stored, arrays, arrays, int(meta["iteration"]), window, int(lw["count"])


def _diverged(cfg: C.Config, it: int, ckpt: Path | None, last_good: int | None) -> TrainingDivergedError:
    kept = (f"the last good checkpoint ({ckpt}, meta-iteration {last_good}) is kept" if ckpt is not None
            else "no checkpoint had been written yet")
    return TrainingDivergedError(f"parameters or losses became NaN/Inf by meta-iteration {it}; {kept}. "
                                 f"Lower inner_lr ({cfg.inner_lr}) or outer_lr "
                                 f"({DEFAULTS[cfg.algorithm]['outer_lr'] if cfg.outer_lr is None else cfg.outer_lr}) "
                                 "and train again")


class _Progress(NamedTuple):
    """Where the loop stands: replaced as a whole each iteration, so an interrupt sees a consistent state."""

    params: dict
    state: dict
    iteration: int
    window: dict  # metric sums since the last log record (lazy device arrays)
    n_window: int


def _final_point(curve: dict) -> dict:
    return {name: curve[name]["mean"][-1] for name in ("loss", "metric") if name in curve}


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop records past the checkpoint, so a resumed run's log equals an uninterrupted one."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["iteration"] <= iteration]
    _atomic_write(path, "".join(line + "\n" for line in keep))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _NoBar:
    def update(self, it, record):
        pass

    def close(self):
        pass


class _LineBar:
    """Progress as log lines (rank 0 of a multi-process run, whose output mlx.launch forwards)."""

    def __init__(self, log: Callable[[str], None], total: int):
        self.log, self.total, self.t0 = log, total, time.perf_counter()

    def update(self, it, record):
        info = " ".join(f"{k}={v:.3g}" for k, v in record.items() if k != "iteration")
        self.log(f"meta-iteration {it}/{self.total} {info} ({time.perf_counter() - self.t0:.0f} s)")

    def close(self):
        pass


class _RichBar:
    def __init__(self, start: int, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.p = Progress(TextColumn("meta-train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                          TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        self.task = self.p.add_task("train", total=total, completed=start, info="")
        self.p.start()

    def update(self, it, record):
        info = " ".join(f"{k}={v:.3g}" for k, v in record.items() if k in ("support_loss", "adapted_loss"))
        self.p.update(self.task, completed=it, info=info)

    def close(self):
        self.p.stop()


def _progress(enabled: bool, start: int, total: int):
    return _RichBar(start, total) if enabled else _NoBar()
