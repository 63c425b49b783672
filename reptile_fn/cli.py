"""The ``reptile-fn`` command line: parsing and printing only; the work is done in ``reptile_fn.run``."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import List, Optional

import typer

import reptile_fn
from reptile_fn import _blas, _malloc
from reptile_fn.cli_options import ConfigOpt, DataDirOpt, EncoderOpt, SetOpt, _count, _with_data_dir, aborted, errors_to_exit, path_arg, printing, stdout_failed
from reptile_fn.errors import ReptileFnError
from reptile_fn.signals import LAST_STOP

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Functional meta-learning (Reptile, MAML and kin) on MLX.")

def _version(value: bool) -> None:
    if value:
        typer.echo(f"reptile-fn {reptile_fn.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Functional meta-learning (Reptile, MAML and kin) on MLX."""


def _limit(option: str, value: Optional[int], key: str) -> None:
    """A command-line count checked against the config limit of the setting it stands for."""
    from reptile_fn import config as C

    if value is not None:
        C.check_limit(key, value, option)


@app.command()
@errors_to_exit
def info(config: Optional[Path] = typer.Option(None, "--config", "-c", parser=path_arg,
                                              help="Also describe this config's model (a YAML file or a shipped config's "
                                              "name)."),
         set_: List[str] = SetOpt,
         checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="A shipped init's model card.")) -> None:
    """Versions, device, BLAS, and the task families and algorithms available."""
    import mlx.core as mx
    import numpy as np

    from reptile_fn import pretrained
    from reptile_fn.algorithms import ALGORITHMS
    from reptile_fn.config import shipped_names
    from reptile_fn.run.report import describe_config
    from reptile_fn.tasks import FAMILIES

    rows = [
        ("reptile_fn", reptile_fn.__version__),
        ("python", platform.python_version()),
        ("platform", f"{platform.system()} {platform.machine()}"),
        ("mlx", mx.__version__),
        ("numpy", np.__version__),
        ("device", str(mx.default_device())),
        ("gpu available", str(mx.is_available(mx.gpu))),
        ("blas", _blas.status()),
        ("malloc", _malloc.status()),
        ("task families", ", ".join(f"{n} ({f.kind})" for n, f in FAMILIES.items())),
        ("algorithms", ", ".join(ALGORITHMS)),
        ("configs", ", ".join(shipped_names()) + "  (--config NAME)"),
        ("inits", ", ".join(pretrained.names()) + "  (--checkpoint NAME)"),
    ]
    card = pretrained.card(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and card is None:  # before any output: a failed command prints only its error line
        if not pretrained.resolve(checkpoint).exists():  # empty or missing: resolve says so, not 'no card'
            raise ReptileFnError(f"checkpoint {checkpoint} does not exist; pass a run folder, its checkpoint or a "
                                 f"shipped initialization's name ({', '.join(pretrained.names())})")
        raise ReptileFnError(f"'{checkpoint}' has no model card: cards come with the shipped initializations "
                             f"({', '.join(pretrained.names())}); a run's own results are in its summary.json")
    model = describe_config(config, set_) if config is not None or set_ else None
    for k, v in rows:
        typer.echo(f"{k:<14} {v}")
    if card is not None:
        typer.echo(pretrained.format_card(card))
    if model is not None:
        typer.echo(model)


@app.command()
@errors_to_exit
def validate(config: Optional[Path] = ConfigOpt, set_: List[str] = SetOpt, data_dir: Optional[Path] = DataDirOpt,
             encoder: Optional[Path] = EncoderOpt) -> None:
    """Check a config (and that one meta-step runs with it); exit non-zero with a message if not."""
    import mlx.core as mx

    from reptile_fn import config as C
    from reptile_fn import tree as T
    from reptile_fn.run import build, run_keys

    cfg = C.load(config, _with_data_dir(set_, data_dir, encoder))
    run = build(cfg)
    keys = run_keys(cfg.seed)
    params = run.initial_params(keys.init) if cfg.init else run.model.init(keys.init)  # init: read and checked
    batch = run.sample_train(keys.train, cfg.meta_batch_size)
    new, _, metrics = run.meta.step(params, run.meta.init(params), batch, keys.train)
    mx.eval(new, metrics)
    if not bool(T.all_finite(new)):
        raise ReptileFnError("one meta-step from the initialization already gives NaN/Inf; lower inner_lr or outer_lr, "
                             "or a scale you set (peft.scale, peft.head_scale)")
    what = (", ".join(cfg.tasks.families) if cfg.tasks.dataset == "synthetic"
            else f"{cfg.tasks.dataset} {cfg.tasks.n_way}-way {cfg.tasks.k_shot}-shot")
    typer.echo(f"config OK ({config or 'built-in default'}): {cfg.algorithm} on {what} "
               f"({run.tasks.kind}), {T.param_count(params)} parameters, blas: {_blas.status()}")


@app.command()
@errors_to_exit
def train(
    config: Optional[Path] = ConfigOpt,
    set_: List[str] = SetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", parser=path_arg, help="Run directory (default: runs/<config>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    data_dir: Optional[Path] = DataDirOpt,
    encoder: Optional[Path] = EncoderOpt,
) -> None:
    """Meta-train, then print held-out few-shot results of the meta-learned init vs a random init."""
    set_ = _with_data_dir(set_, data_dir, encoder)
    from reptile_fn import config as C
    from reptile_fn.run import format_results, stored_config
    from reptile_fn.run import train as run_train
    from reptile_fn.run.report import format_peft

    from reptile_fn import io

    name = config.stem if config else "default"
    out = io.check_out_dir(out or Path("runs") / name, ("checkpoint.safetensors", "metrics.jsonl", "summary.json",
                                                         "config.yaml"))
    if resume and not config:
        # --set on a resumed run is compared against the run's own config, not the defaults
        cfg = C.with_overrides(stored_config(out), set_) if set_ else None
    else:
        cfg = C.load(config, set_)
        io.check_out_dir(out, data=(cfg.tasks.path,))
    summary = run_train(cfg, out, resume=resume, progress=progress, log=typer.echo)
    if summary["rank"] != 0:
        return  # a multi-process run reports from rank 0 only
    rate = (f" ({summary['meta_steps_per_s']} meta-steps/s, {summary['examples_per_s']:,.0f} support examples "
            "adapted/s)" if summary["meta_steps_per_s"] else "")
    done = summary["session_iterations"] or summary["iteration"]  # a finished run resumed: its training's figures
    so_far = f" (now at {summary['iteration']})" if done != summary["iteration"] else ""
    typer.echo(f"trained {done} meta-iterations{so_far} in {summary['seconds']:.1f} s{rate}; run in {out}")
    if "peft" in summary:
        typer.echo(format_peft(summary["peft"]) + f"; adapter in {out / 'adapter'}")
    if "eval" in summary:
        typer.echo(format_results(summary["eval"]))


@app.command("eval")
@errors_to_exit
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", parser=path_arg, help="A run folder written by train (or its "
                                    "checkpoint.safetensors), or a shipped initialization's name (`reptile-fn info` "
                                    "lists them)."),
    baselines: Optional[str] = typer.Option(
        None, "--baselines", help="Comma list of random, transfer (pretrained on pooled tasks), head (head-only); "
        "PEFT runs: lora0 (fresh adapter; not for peft.method head/full), base-full, base-head, random; none: the "
        "meta-learned init alone. Default: all but random for PEFT."),
    episodes: Optional[int] = typer.Option(None, "--episodes", min=1, help="Held-out episodes (default: the config's)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=0, help="Adaptation steps K (default: the config's)."),
    speed_steps: int = typer.Option(100, "--speed-steps", min=0,
                                    help="Horizon for the adaptation-speed analysis (0: skip it)."),
    out: Optional[Path] = typer.Option(None, "--out", parser=path_arg, help="Folder for results (default: <run>/eval)."),
    json_out: Optional[Path] = typer.Option(None, "--json", parser=path_arg, help="Also write the results JSON here."),
    data_dir: Optional[Path] = DataDirOpt,
    encoder: Optional[Path] = EncoderOpt,
    split: Optional[str] = typer.Option(None, "--split", help="Held-out split: test or val; Omniglot also evaluation "
                                        "(runs of the alphabets protocol), clinc150 also banking77 (cross-domain)."),
    data: Optional[Path] = typer.Option(None, "--data", parser=path_arg,
                                        help="Score the run on data it never trained on: a folder (or .zip) of class subfolders "
                                        "for image runs, a CSV of text,label rows for text runs; every class is held out."),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Evaluate with a changed setting, e.g. tasks.k_shot=5 or eval.transductive=false."),
) -> None:
    """Few-shot results on fresh held-out tasks after 0..K steps: meta-learned init vs baselines, 95% CIs."""
    from reptile_fn import io, pretrained
    from reptile_fn.run import baseline_inits, default_baselines, final_evaluation, format_results, format_speed, load
    from reptile_fn.run.files import check_results_out
    from reptile_fn.run.report import FIGURES, save_results

    for option, value, key in (("--episodes", episodes, "eval.episodes"), ("--steps", steps, "eval.inner_steps"),
                               ("--speed-steps", speed_steps, "eval.inner_steps")):
        _limit(option, value, key)
    if split is not None and not split.strip():
        raise ReptileFnError("--split is empty; give test, val or evaluation, or leave it out for the run's own")
    if split is not None and any(s.split("=", 1)[0].strip() in ("tasks.test_split", "test_split") for s in set_):
        raise ReptileFnError("--split and --set tasks.test_split both choose the held-out split; give one of them")
    chosen = None if baselines is None else tuple(b.strip() for b in baselines.split(","))
    if chosen is not None and (not all(chosen) or "none" in map(str.lower, chosen) and len(chosen) > 1):
        raise ReptileFnError(f"--baselines {baselines!r} has an empty entry, or none beside other names; give a comma "
                             "list such as random,transfer, or none alone for the meta-learned init alone")
    chosen = () if chosen is not None and chosen[0].lower() == "none" else chosen
    overrides = _with_data_dir(([f"tasks.test_split={split}"] if split is not None else []) + list(set_), data_dir, encoder)
    checkpoint = pretrained.resolve(checkpoint)
    out_dir = io.check_out_dir(out or pretrained.default_out(checkpoint, "eval"), ("results.json", *FIGURES),
                               data=(data,))
    check_results_out(out_dir, checkpoint)
    if json_out is not None:
        io.check_json_out(json_out)
    run, params, state, iteration = load(checkpoint, overrides, data=data)
    names = default_baselines(run) if chosen is None else chosen
    base = baseline_inits(run, names)
    if getattr(run.tasks, "inverted", 0):
        typer.echo(f"{_count(run.tasks.inverted, 'image')} of {data} on a light background "
                   f"{'was' if run.tasks.inverted == 1 else 'were'} inverted (dark strokes on white), to look like the "
                   "run's training images (bright on dark; tasks.invert)")
    ev = final_evaluation(run, params, state, episodes=episodes, steps=steps, baselines=base,
                          speed_steps=speed_steps or None)
    typer.echo(f"{checkpoint} (meta-iteration {iteration})")
    typer.echo(format_results(ev, max_step=run.cfg.eval.inner_steps if steps is None else steps))
    if "speed" in ev:
        typer.echo(format_speed(ev["speed"]))
    written = save_results(run, params, state, ev, out_dir, checkpoint=checkpoint, iteration=iteration,
                           baselines=base, json_out=json_out)
    typer.echo(f"wrote {written[0]} and {', '.join(p.name for p in written[1:])}")


@app.command()
@errors_to_exit
def adapt(
    checkpoint: Path = typer.Option(..., "--checkpoint", parser=path_arg,
                                    help="A run folder (or its checkpoint.safetensors), or a shipped initialization's name "
                                    "(e.g. omniglot-5w1s; `reptile-fn info` lists them)."),
    support: Path = typer.Option(..., "--support", parser=path_arg,
                                 help="Your labelled examples: a folder of class subfolders of images (image runs) or a CSV "
                                 "with text,label columns (text runs)."),
    query: Path = typer.Option(..., "--query", parser=path_arg,
                               help="What to label: an image, a folder of images (or of class subfolders, to score them), "
                               "or a CSV with a text column (and a label column, to score them)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=0, help="Adaptation steps (default: the run's "
                                        "eval.inner_steps)."),
    out: Path = typer.Option(Path("predictions"), "--out", parser=path_arg,
                             help="Where predictions.csv, predictions.json and adapted.safetensors go."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the adaptation's mini-batch order."),
) -> None:
    """Adapt a meta-learned init to your labelled examples and label new ones (class and probabilities)."""
    import numpy as np

    from reptile_fn import io, pretrained
    from reptile_fn.run.adapt import adapt_to, save_predictions

    _limit("--steps", steps, "eval.inner_steps")
    _limit("--seed", seed, "seed")
    pretrained.resolve(checkpoint)  # a missing file or a folder without a run stops here, before anything is written
    io.check_out_dir(out, ("predictions.csv", "predictions.json", "adapted.safetensors"))
    pred, run, state = adapt_to(checkpoint, support, query, steps=steps, seed=seed)
    io.check_out_dir(out, data=(support, query))  # once they were read as this run's kind of data
    counts = np.bincount(pred.predicted, minlength=len(pred.classes))
    typer.echo(f"adapted {checkpoint} on {support} ({len(pred.classes)} classes) for {pred.steps} steps; "
               f"labelled {_count(len(pred.items), 'item')} of {query}: "
               + ", ".join(f"{c} {n}" for c, n in zip(pred.classes, counts)))
    if pred.inverted:
        typer.echo(f"{_count(pred.inverted, 'image')} on a light background {'was' if pred.inverted == 1 else 'were'} "
                   "inverted (dark strokes on white), to look like the run's training images (bright on dark; "
                   "tasks.invert)")
    if pred.accuracy is not None:
        typer.echo(f"accuracy on the labelled query items: {100 * pred.accuracy:.2f}% ({_count(len(pred.items), 'item')})")
    written = save_predictions(pred, run, state, out, source=str(checkpoint))
    typer.echo("wrote " + ", ".join(str(p) for p in written))


@app.command()
@errors_to_exit
def embed(
    checkpoint: Path = typer.Option(..., "--checkpoint", parser=path_arg, help="A run folder or checkpoint, or a shipped name: a "
                                    "run on synthetic classification families (names the family) or Omniglot (the alphabet)."),
    family: List[str] = typer.Option([], "--family", help="Only these task families (repeatable; default: the run's)."),
    shots: int = typer.Option(5, "--shots", help="Support examples per class of every embedded task (k_shot)."),
    tasks_n: int = typer.Option(400, "--tasks", help="Labelled bank tasks; half as many query tasks are identified."),
    adapt_steps: int = typer.Option(5, "--adapt-steps", help="SGD steps on the support set before the Fisher."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fresh held-out tasks."),
    way: Optional[int] = typer.Option(None, "--way", min=2, help="Omniglot: classes per embedded episode (default: "
                                      "the run's n_way; 20-way runs need fewer: an alphabet holds few held-out characters)."),
    out: Optional[Path] = typer.Option(None, "--out", parser=path_arg, help="Folder for results (default: <run>/embed)."),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Names the family (synthetic runs) or alphabet (Omniglot) of fresh held-out tasks by handcrafted and Fisher
    (Task2Vec) embeddings, top-1 nearest neighbour, with a PCA plot."""
    for name, value, low in (("--shots", shots, 1), ("--tasks", tasks_n, 2), ("--adapt-steps", adapt_steps, 0),
                             ("--seed", seed, 0)):
        if value < low:
            raise ReptileFnError(f"{name} must be >= {low}, got {value}; e.g. {name} {max(low, 5)}")
    if tasks_n > 10_000:
        raise ReptileFnError(f"--tasks {tasks_n:,} is above 10,000: the bank and query tasks' pairwise distances are "
                             "held in memory; lower it")
    for option, value, key in (("--shots", shots, "tasks.k_shot"), ("--adapt-steps", adapt_steps, "eval.inner_steps"),
                               ("--seed", seed, "seed")):
        _limit(option, value, key)
    from reptile_fn import io, plots, pretrained

    checkpoint = pretrained.resolve(checkpoint)
    out_dir = io.check_out_dir(out or pretrained.default_out(checkpoint, "embed"), ("embed.json", "task_embeddings.png"))
    from reptile_fn.run.files import Saved

    if (dataset := Saved(checkpoint).cfg.tasks.dataset) not in ("synthetic", "omniglot"):  # before loading its data
        raise ReptileFnError(f"{checkpoint} is a run on {dataset}; embed names the family of a run on synthetic "
                             "classification families or the alphabet of an Omniglot run: pass one of those")
    import mlx.core as mx

    from reptile_fn.run import load
    from reptile_fn.run.identify import format_identification, identify_tasks

    run, params, _, iteration = load(checkpoint, _with_data_dir([], data_dir))
    result = identify_tasks(run, params, k_shot=shots, bank_tasks=tasks_n, query_tasks=max(1, tasks_n // 2),
                            key=mx.random.key(seed), adapt_steps=adapt_steps, families=tuple(family), n_way=way)
    typer.echo(f"{checkpoint} (meta-iteration {iteration}): {format_identification(result)}")
    summary = {k: result[k] for k in ("what", "accuracy", "k_shot", "bank_tasks", "query_tasks", "adapt_steps")}
    with io.staged(out_dir) as stage:  # the two files replace the last ones together
        plots.task_embeddings(result, stage / "task_embeddings.png")
        io.write_json(stage / "embed.json", {"checkpoint": str(checkpoint), "families": list(result["families"]), "seed": seed,
                                             **summary})
    typer.echo(f"wrote {out_dir / 'embed.json'} and {out_dir / 'task_embeddings.png'}")


@app.command()
@errors_to_exit
def download(
    dataset: str = typer.Argument(..., help="What to download: omniglot."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", parser=path_arg, help="The data folder: the zips go into its "
                                            "omniglot/ subfolder (default: $REPTILE_FN_DATA)."),
    sets: str = typer.Option("background,evaluation", "--sets", help="Omniglot zips: background, evaluation."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file whose checksum differs."),
) -> None:
    """Download a dataset's official files (checked against published checksums) into the data folder."""
    from reptile_fn import datasets

    if dataset != "omniglot":
        raise ReptileFnError(f"unknown dataset {dataset!r}; available: omniglot")
    paths = datasets.download_omniglot(datasets.omniglot_dir(data_dir), tuple(sets.split(",")), overwrite=force,
                                       log=typer.echo)
    typer.echo("ready: " + ", ".join(str(p) for p in paths))


@app.command()
@errors_to_exit
def compare(runs: List[Path] = typer.Argument(..., parser=path_arg,
                                              help="Run folders (train), eval folders or results files.")) -> None:
    """A markdown table of several runs side by side (final few-shot results of each init)."""
    from reptile_fn.run import compare_runs

    typer.echo(compare_runs(runs))


SOURCE_ROOT = Path(reptile_fn.__file__).resolve().parents[1]  # the repository, when run from a source checkout


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
@errors_to_exit
def bench(ctx: typer.Context) -> None:  # --help goes to the script: its argparse lists every option
    """Meta-step throughput tables (runs benchmarks/throughput.py; pass its options, e.g. --peers --json F)."""
    import runpy

    script = SOURCE_ROOT / "benchmarks" / "throughput.py"
    if not script.is_file() or not (SOURCE_ROOT / "pyproject.toml").is_file():
        raise ReptileFnError("the benchmarks ship with the source, not with the installed package; to run them, "
                             "git clone the reptile_fn repository and run `uv run reptile-fn bench` in it "
                             "(benchmarks/README.md there has the options)")
    try:
        code = printing(runpy.run_path(str(script), run_name="bench")["main"], list(ctx.args), prog="reptile-fn bench")
        if code:
            raise typer.Exit(code)
    except SystemExit as e:
        if isinstance(e.code, str):  # the script's own message (sys.exit("...")): one error line, as ours
            raise ReptileFnError(e.code.removeprefix("error: ")) from None
        if e.code not in (0, None):
            raise typer.Exit(e.code) from None


def main() -> None:
    """The ``reptile-fn`` entry point: the app, with click's usage errors (a bad option value, a missing
    option) as one ``error:`` line and exit status 2, as every other error."""
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")  # typer's own click
    LAST_STOP.clear()
    try:
        code = app(standalone_mode=False)  # the status of a typer.Exit (our errors: 2; a stop exits by itself)
    except (typer.Abort, KeyboardInterrupt):  # an end of input; a stop while typer builds the command
        code = 130
    except usage_error as e:
        command = f" {e.ctx.info_name}" if getattr(e, "ctx", None) is not None and e.ctx.parent is not None else ""
        typer.echo(f"error: {e.format_message().rstrip('.')}; see reptile-fn{command} --help", err=True)
        raise SystemExit(2) from None
    except typer.Exit as e:
        raise SystemExit(e.exit_code) from None
    except OSError as e:  # --help or --version into > /dev/full (a command's own output: errors_to_exit)
        raise (SystemExit(2) if stdout_failed(e) else e) from None
    if code == 130:  # a stop before the command began (typer's status for it is silent); a command's own says so
        code = aborted()
    if isinstance(code, int) and code:
        raise SystemExit(code)
