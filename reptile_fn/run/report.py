"""What a run is worth: the meta-learned init against baselines on held-out episodes, adaptation speed,
figures and tables, and several runs side by side.

Every init adapts with the run's inner loop (``build.evaluation_loop``) on the same episodes, drawn from
the run's seed, so results are deterministic and comparable across inits and runs.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np

from reptile_fn import config as C
from reptile_fn import io
from reptile_fn import tree as T
from reptile_fn.baselines import Init, make_baselines, steps_to_reach
from reptile_fn.errors import ConfigError, ReptileFnError, TrainingDivergedError
from reptile_fn.evaluate import per_episode_curves, recorded_steps, summarize
from reptile_fn.inner import InnerLoop, adapt
from reptile_fn.models import HEAD
from reptile_fn.run.build import Run, evaluation_loop, run_keys
from reptile_fn.run.files import METRICS
from reptile_fn.progress import task

PEFT_BASELINES = ("lora0", "base-full", "base-head", "random")


SAMPLE_BYTES = 256 * 2**20
"""Held-out episodes in memory at once: a larger evaluation samples and scores them in chunks of this size, so
its memory does not grow with the number of episodes (a 20-way 5-shot Omniglot episode holds ~0.4 MB)."""


def evaluate_init(run: Run, params, key: mx.array, episodes: int, steps: int | None = None, *, state=None,
                  trainable="run", record: list[int] | None = None, progress=None) -> dict:
    """Few-shot curve of ``params`` on ``episodes`` held-out episodes drawn with ``key``.

    ``state``: the algorithm state of a meta-learned init (its learned rates and kept inner state
    adapt it, ``MetaStep.inner``); None for a baseline. ``trainable``: which leaves adapt, ``"run"`` as
    the run's inner loop (ANIL: the head), ``None`` all. ``record``: the steps at which the query set is
    scored (default: ``evaluate.recorded_steps``); scoring costs more than a step when evaluation is not
    transductive, so a table that needs only the last step says so. ``progress``: told of finished
    episodes (``progress.task``). Episodes beyond ``SAMPLE_BYTES`` are drawn and scored in chunks, each
    with its own keys from ``key`` (one chunk, the common case, draws exactly ``sample_test(key', n)``).
    """
    sample_key, adapt_key = mx.random.split(key)
    loop = evaluation_loop(run, state, steps=steps, trainable=trainable)
    record = sorted(record) if record else recorded_steps(loop.steps)
    per_chunk = max(1, SAMPLE_BYTES // _episode_bytes(run))
    n_chunks = -(-episodes // per_chunk)
    keys = [(sample_key, adapt_key)] if n_chunks == 1 else list(zip(mx.random.split(sample_key, n_chunks),
                                                                    mx.random.split(adapt_key, n_chunks)))
    on_chunk = progress.advance if progress is not None else None
    curves = []
    for i, (ks, ka) in enumerate(keys):
        n = min(per_chunk, episodes - i * per_chunk)
        batch = run.tasks.sample_test(ks, n)
        curves.append(per_episode_curves(loop, run.model.apply, run.loss, params, batch, metric=run.metric, key=ka,
                                         record=record, transductive=run.cfg.eval.transductive, split=run.eval_split,
                                         on_chunk=on_chunk))
        del batch
    return summarize({name: np.concatenate([c[name] for c in curves]) for name in curves[0]}, record)


def _episode_bytes(run: Run) -> int:
    """Bytes of one held-out episode's inputs and labels."""
    one = run.tasks.sample_test(mx.random.key(0), 1)
    return max(1, sum(a.nbytes for a in one))


def default_baselines(run: Run) -> tuple[str, ...]:
    if _pretrained_on_held_out(run):
        return ("random",)
    if run.peft is None:
        return "random", "transfer", "head"
    return ("base-full", "base-head") if _without_adapter(run) else ("lora0", "base-full", "base-head")


def _pretrained_on_held_out(run: Run) -> tuple[str, ...]:
    """The baselines that would be pretrained on the very classes scored: every class is held out
    (``tasks.test_split = all``: ``eval --data``), so the training split is those classes, and transfer / head (plain
    runs) or a PEFT run's ``peft.base: pretrain`` (lora0, base-full, base-head start from it) train on them."""
    if run.tasks is None or run.cfg.tasks.test_split != "all":
        return ()
    if run.peft is None:
        return "transfer", "head"
    return ("lora0", "base-full", "base-head") if run.cfg.peft.base == "pretrain" else ()


def _without_adapter(run: Run) -> bool:
    """A PEFT run of method head or full: no adapter, so ``lora0`` would be ``base-head`` / ``base-full`` again."""
    return run.cfg.peft.method in ("head", "full")


def fresh_start(run: Run) -> str:
    """The baseline that is the run's starting point adapted like the run: what its meta-learning is measured
    against (plain runs: a random init)."""
    if run.peft is None:
        return "random"
    return {"head": "base-head", "full": "base-full"}.get(run.cfg.peft.method, "lora0")


def baseline_inits(run: Run, names) -> dict[str, Init]:
    """The named baselines for this run, deterministic given its seed.

    Plain runs: ``baselines.BASELINES`` (random, transfer, head). PEFT runs start from the run's own
    base: ``lora0`` (a fresh adapter, B = 0, adapted like the run), ``base-full`` (full fine-tuning of
    the base), ``base-head`` (its head only), ``random`` (a random base, fully fine-tuned).
    """
    keys = run_keys(run.cfg.seed)
    leaking = [n for n in names if n in _pretrained_on_held_out(run)]
    if leaking:
        raise ConfigError(f"the {' and '.join(leaking)} baseline{'s are' if len(leaking) > 1 else ' is'} "
                          "pretrained on the run's training classes, and here every class is held out (eval --data, or "
                          "tasks.test_split = all), so it would train on the data it is scored on; use --baselines "
                          "random")
    if run.peft is None:
        with task("pretraining the transfer baseline", 2000 if {"transfer", "head"} & set(names) else 0) as bar:
            return make_baselines(names, run.model, run.loss, run.tasks, random_key=keys.random_init,
                                  transfer_key=mx.random.split(keys.eval_final, 4)[3], on_step=bar.advance)
    unknown = [n for n in names if n not in PEFT_BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline {unknown[0]!r} for a PEFT run; choose from {', '.join(PEFT_BASELINES)} "
                          "(base-full / base-head fine-tune the run's base: peft.base)")
    if "lora0" in names and _without_adapter(run):
        raise ConfigError(f"baseline lora0 (a fresh adapter) needs an adapter; this run's peft.method is "
                          f"{run.cfg.peft.method}: its starting point adapted like the run is {fresh_start(run)}")
    start = run.initial_params(keys.init)
    chosen = {"lora0": lambda: Init(start, run.inner.trainable), "base-full": lambda: Init(start, T.match("base.*")),
              "base-head": lambda: Init(start, T.match(f"base.{HEAD}")),
              "random": lambda: Init(run.model.init(keys.random_init), T.match("base.*"))}
    return {name: chosen[name]() for name in names}


def final_evaluation(run: Run, params, state, episodes: int | None = None, steps: int | None = None,
                     baselines: tuple[str, ...] | dict | None = None, speed_steps: int | None = None) -> dict:
    """The meta-learned init vs baselines on the same held-out episodes (deterministic given the seed).

    The meta-learned init adapts with the algorithm's loop (Meta-SGD: its learned per-parameter rates;
    a kept inner state), the baselines with the run's loop from a fresh state. With ``speed_steps``,
    curves run that long and ``speed`` says how many steps each init needs to reach the meta-learned
    init's result after ``steps`` (``adaptation_speed``). ``baselines`` are names, or the
    ``baseline_inits`` already built (so a caller that also draws figures pretrains once).
    """
    cfg = run.cfg
    keys = run_keys(cfg.seed)
    n = episodes or cfg.eval.episodes
    k = cfg.eval.inner_steps if steps is None else steps
    horizon = max(k, speed_steps or 0)
    if baselines is None:  # the final evaluation of `train`: random init, or for PEFT a fresh adapter on the base
        baselines = (fresh_start(run),)
    base = baselines if isinstance(baselines, dict) else baseline_inits(run, baselines)
    record = sorted(set(recorded_steps(horizon)) | {k})  # K itself, whatever the speed horizon records (13 of 100)
    with task(f"evaluation ({1 + len(base)} inits × {n} episodes × {horizon} steps)", n * (1 + len(base))) as bar:
        inits = {"meta": evaluate_init(run, params, keys.eval_final, n, horizon, state=state, record=record,
                                       progress=bar)}
        for name, b in base.items():  # baselines adapt what they say (every leaf, the head), whatever the run adapts
            inits[name] = evaluate_init(run, b.params, keys.eval_final, n, horizon, trainable=b.trainable,
                                        record=record, progress=bar)
    diverged = [name for name, c in inits.items() if not np.all(np.isfinite(c["loss"]["mean"]))]
    if diverged:  # NaN in a results table reads as a number; refuse it with the setting that caused it
        raise TrainingDivergedError(f"adaptation diverged (NaN/Inf loss) during evaluation of {', '.join(diverged)}; "
                                    f"lower eval.inner_lr (now {cfg.eval.inner_lr or cfg.inner_lr}) or eval.inner_steps")
    out = {"kind": run.tasks.kind, "metric": "accuracy" if run.metric is not None else "mse",
           "k_shot": cfg.tasks.k_shot, "inner_steps": k, "inner_lr": cfg.eval.inner_lr or cfg.inner_lr,
           "inner_lr_learned": isinstance(run.meta.inner(state).lr, dict), "inits": inits}
    if speed_steps and k > 0:  # after 0 steps every init is where it starts: no speed to compare
        out["speed"] = adaptation_speed(out, k)
        m = min(64, n)  # timed on as many tasks as were evaluated, at most 64 (a text episode is costly)
        with task(f"timing an inner step ({1 + len(base)} inits × {m} tasks)", 1 + len(base)) as bar:
            ms = {"meta": ms_per_step(run, params, state=state, episodes=m)}
            bar.advance()
            for name, b in base.items():
                ms[name] = ms_per_step(run, b.params, trainable=b.trainable, episodes=m)
                bar.advance()
        for name, row in out["speed"]["inits"].items():
            row["ms_per_step"] = round(ms[name], 4)
            row["ms_to_target"] = round(ms[name] * row["steps"], 3)
    return out


def ms_per_step(run: Run, params, *, state=None, trainable="run", episodes: int = 64, steps: int = 10) -> float:
    """Wall-clock milliseconds of one inner step on one task (compiled, vmapped over ``episodes`` tasks)."""
    batch = run.tasks.sample_test(mx.random.key(0), episodes)
    loop = evaluation_loop(run, state, steps=steps, trainable=trainable)._replace(start=None)

    def one(p, sx, sy, key):
        return adapt(loop, run.model.apply, run.loss, p, (sx, sy), key).params

    go = mx.compile(mx.vmap(one, in_axes=(None, 0, 0, 0)))
    keys = mx.random.split(mx.random.key(1), episodes)
    mx.eval(go(params, batch.support_x, batch.support_y, keys))  # compile
    t0 = time.perf_counter()
    for _ in range(3):
        mx.eval(go(params, batch.support_x, batch.support_y, keys))
    return (time.perf_counter() - t0) / 3 / steps / episodes * 1000


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
    i_meta = steps_to_reach(meta_curve, target, higher_is_better=accuracy)
    t_meta = max(steps[i_meta], 1)
    meta_from = max(steps[i_meta - 1] + 1 if i_meta else t_meta, 1)
    rows = {}
    for name, curve in ev["inits"].items():
        i = steps_to_reach(curve[key]["mean"], target, higher_is_better=accuracy)
        t = steps[i] if i is not None else steps[-1]  # the first recorded step at or past the target
        # between recorded steps (a sparse grid past step 10) the target was reached somewhere after the previous one,
        # so a count is a range, and a ratio to meta's (a range too) runs from the low ends to the high ones
        after = steps[i - 1] + 1 if i else t
        low, high = (1.0, 1.0) if name == "meta" else (after / t_meta, t / meta_from)
        rows[name] = {"steps": t, "reached": i is not None, "ratio": t / t_meta, "steps_from": after,
                      "ratio_range": [low, high]}
    return {"target": target, "target_from": f"meta after {k} steps", "metric": "accuracy" if accuracy else "mse",
            "horizon": steps[-1], "meta_steps": t_meta, "inits": rows}


def describe_config(path, overrides) -> str:
    """``describe_model`` of a config file (or shipped name) with ``overrides``. Counting parameters reads no data, so
    an own-data config without ``tasks.path`` is counted too (images: for 1-channel input unless model.channels)."""
    try:
        return describe_model(C.load(path, overrides))
    except ConfigError as e:
        if "needs tasks.path" not in str(e):
            raise
    cfg = C.load(path, [*overrides, "tasks.path=unread"])
    if cfg.tasks.dataset == "images" and cfg.model.channels is None:
        return describe_model(C.with_overrides(cfg, ["model.channels=1"])) + " (gray images; colour: model.channels=3)"
    return describe_model(cfg)


def describe_model(cfg) -> str:
    """Parameter counts of a config's model: total, adapted per task, meta-learned (PEFT: the adapter)."""
    from reptile_fn.run.build import build
    from reptile_fn.run.stored import config_shapes

    run = build(cfg, shapes=config_shapes(cfg))  # no data read where the settings give the shapes
    params = run.model.init(mx.random.key(cfg.seed))  # shapes only: a random base stands in for a pretrained one
    if run.peft is not None:
        return f"{'parameters':<14} " + format_peft(peft_summary(run, params))
    total = T.param_count(params)
    adapted = T.param_count(T.partition(params, run.inner.trainable)[0])
    return f"{'parameters':<14} {C.model_kind(cfg)}: {adapted:,} of {total:,} adapt per task, {total:,} meta-learned"


def format_peft(p: dict) -> str:
    """One line: a PEFT run's method, adapted and meta-learned parameter counts, and per-weight ranks."""
    ranks = ", ".join(f"{k} {v}" for k, v in p["ranks"].items()) or "none (no adapter)"
    return (f"peft {p['method']}: {p['adapted']:,} of {p['total']:,} parameters adapt per task, "
            f"{p['meta_learned']:,} meta-learned; ranks: {ranks}")


def peft_summary(run: Run, params) -> dict:
    """Method, per-weight ranks, and total / adapted / meta-learned parameter counts of a PEFT run."""
    from reptile_fn import peft

    counts = peft.counts(params, run.inner.trainable, run.meta_trainable)
    return {"method": run.cfg.peft.method, "ranks": peft.ranks(params.get("adapter", {})), **counts}


def probe(run: Run):
    """The probe network of a run's Fisher task embeddings: its model, adapted with plain SGD steps at the
    evaluation rate on the leaves the run adapts (``embed.similarity``)."""
    from reptile_fn.embed.similarity import Probe

    lr = run.cfg.eval.inner_lr or run.cfg.inner_lr
    return Probe(run.model.apply, run.loss, InnerLoop(lr=lr, trainable=run.inner.trainable))


def save_results(run: Run, params, state, ev: dict, out_dir: Path, *, checkpoint: Path, iteration: int,
                 baselines: dict | None = None, json_out: Path | None = None) -> list[Path]:
    """``results.json`` (and ``json_out``) and the figures of an evaluation; returns the paths written."""
    payload = {"checkpoint": str(checkpoint), "iteration": iteration, "config": C.to_dict(run.cfg), **ev}
    if getattr(run.tasks, "inverted", 0):  # tasks.invert turned these images over (eval --data of an Omniglot run)
        payload["inverted_images"] = run.tasks.inverted
    stale = FIGURES if (Path(out_dir) / "results.json").is_file() else ()  # a user's own figure stays
    with io.staged(out_dir, stale) as stage:  # results.json and its figures replace the last ones together
        figures = write_figures(run, params, state, ev, stage, Path(checkpoint).parent / METRICS, baselines)
        io.write_json(stage / "results.json", payload)
    if json_out is not None:
        io.write_json(json_out, payload)
    return [Path(out_dir) / name for name in ("results.json", *(p.name for p in figures))]


# --- figures -------------------------------------------------------------------------------------

FIGURES = ("curves.png", "training.png", "sine.png")  # what write_figures may draw

def sine_predictions(run: Run, inits: dict, key: mx.array, steps=(0, 1, 10)) -> dict:
    """One held-out sine task: the true curve, its support points, and each init's fit after t steps.

    ``inits[name] = (params, loop)``: where it starts and the inner loop it adapts with. Returns arrays
    ready for ``plots.sine_fit``.
    """
    from reptile_fn.tasks import sine_curve

    tasks = run.tasks
    task_key, data_key = mx.random.split(key)
    # the first of 16 held-out tasks with amplitude >= 2.5, so the figure shows a visible curve
    candidates = tasks.sample_test_tasks(task_key, 16)
    amplitude = np.array(tasks.task_params(candidates)["sine"]["amplitude"])
    pick = int(np.argmax(amplitude >= 2.5)) if (amplitude >= 2.5).any() else 0
    chosen = type(candidates)(candidates.family_ids[pick:pick + 1], candidates.keys[pick:pick + 1])
    episode = tasks.episodes(chosen, data_key)
    params_sine = {k: v[0] for k, v in tasks.task_params(chosen)["sine"].items()}
    x_plot = mx.linspace(-5, 5, 200)[:, None]
    support = (episode.support_x[0], episode.support_y[0])
    preds = {}
    for name, (params, loop) in inits.items():
        seen = adapt(loop._replace(steps=max(steps), batch_size=None), run.model.apply, run.loss, params, support,
                     observe=lambda p: run.model.apply(p, x_plot)[:, 0]).observed
        preds[name] = {t: np.array(seen[t]) for t in steps}
    return {"x_plot": np.array(x_plot[:, 0]), "y_true": np.array(sine_curve(params_sine, x_plot)[:, 0]),
            "support": (np.array(support[0][:, 0]), np.array(support[1][:, 0])), "predictions": preds}


def write_figures(run: Run, params, state, ev: dict, out_dir: Path, metrics_path: Path | None = None,
                  baselines: dict | None = None) -> list[Path]:
    """curves.png (every init), training.png (if a metrics.jsonl is given) and, for sine, sine.png.

    ``baselines``: the ``baseline_inits`` used for ``ev``; the sine figure shows its transfer model.
    """
    from reptile_fn import plots

    out = [plots.adaptation_curves(ev, out_dir / "curves.png")]
    if metrics_path is not None and metrics_path.is_file():  # a pipe or a device there would never end
        try:
            io.check_log_size(metrics_path)
            out.append(plots.training_curve(metrics_path, out_dir / "training.png"))
        except ReptileFnError as e:  # the evaluation's own files are still written
            warnings.warn(f"no training.png: {e}")
    if run.cfg.tasks.dataset == "synthetic" and run.cfg.tasks.families == ("sine",):
        keys = run_keys(run.cfg.seed)
        inits = {"meta-learned": (params, run.meta.inner(state)._replace(start=None))}
        if "transfer" in ev["inits"]:
            transfer = (baselines or baseline_inits(run, ("transfer",)))["transfer"]
            inits["pretrained (transfer)"] = (transfer.params, evaluation_loop(run, trainable=None))
        fit = sine_predictions(run, inits, mx.random.split(keys.eval_final, 4)[2])
        out.append(plots.sine_fit(fit["x_plot"], fit["y_true"], fit["support"], fit["predictions"], out_dir / "sine.png"))
    return out


# --- tables --------------------------------------------------------------------------------------

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
    one = first["episodes"] < 2  # no interval from one episode: "± 0.00" would claim certainty
    lines = [f"{label}, {first['episodes']} held-out episodes, k_shot={ev['k_shot']}, "
             + ("no 95% CI from one episode" if one else "mean ± 95% CI"), head]
    for name, curve in ev["inits"].items():
        at = [steps.index(k) for k in cols]
        cells = [number(scale * curve[metric]["mean"][i]) + ("" if one else f" ± {number(scale * curve[metric]['ci95'][i])}")
                 for i in at]
        lines.append(f"{name:<10}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def format_speed(speed: dict) -> str:
    """Steps (and the ratio to the meta-learned init) to reach the meta-learned init's K-step result."""
    unit = "% accuracy" if speed["metric"] == "accuracy" else " MSE"
    value = 100 * speed["target"] if speed["metric"] == "accuracy" else speed["target"]
    lines = [f"adaptation speed: inner steps to reach {value:.2f}{unit} ({speed['target_from']}), "
             f"horizon {speed['horizon']} steps"]
    for name, row in speed["inits"].items():
        between = row["reached"] and row.get("steps_from", row["steps"]) < row["steps"]  # only bounded by the grid
        steps = (f"{row['steps_from']}-{row['steps']}" if between else f"{row['steps']}") if row["reached"] \
            else f">{row['steps']}"
        lo, hi = row.get("ratio_range", [row["ratio"]] * 2)
        low, high = (f"{f(round(r * 10, 9)) / 10:.1f}" for f, r in ((math.floor, lo), (math.ceil, hi)))  # widened to 0.1
        ratio = (f"{low}-{high}x" if low != high else f"{high}x") if row["reached"] else f">{row['ratio']:.1f}x"
        bound = ">" if not row["reached"] else "≤" if between else ""
        ms = f"   {bound}{row['ms_to_target']:.2f} ms per task" if "ms_to_target" in row else ""
        lines.append(f"  {name:<10}{steps:>7} steps   {ratio:>9} the meta-learned init's{ms}")
    return "\n".join(lines)


def number(v: float) -> str:
    """A table cell's number: two decimals, or powers of ten when it is large (a diverged MSE)."""
    return f"{v:.2f}" if abs(v) < 1e4 else f"{v:.1e}"
