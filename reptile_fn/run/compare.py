"""Several runs side by side: ``compare_runs`` reads each run's (or each evaluation's) results and prints one
markdown table, every row labelled with what it was scored on (data, split, episodes) and how far it adapted."""

from __future__ import annotations

import json
import math
from pathlib import Path

from reptile_fn import config as C
from reptile_fn import io
from reptile_fn.errors import CheckpointError, ReptileFnError
from reptile_fn.run.files import CHECKPOINT, SUMMARY, Saved, stored_config
from reptile_fn.run.report import number as _num


def compare_runs(runs: list[Path]) -> str:
    """Markdown: one row per (run, init) with the final few-shot results. A run folder gives its eval/results.json
    if present (the latest `eval`), else its summary.json; an `eval --out` folder or a results file gives its own."""
    rows, metrics = [], set()
    runs = [Path(r) for r in runs]
    sources = [_results_source(run) for run in runs]
    read = [s.resolve() for s in sources]  # a run folder and its own results file are one run
    twice = next(((i, read.index(f)) for i, f in enumerate(read) if f in read[:i]), None)
    if twice is not None:
        i, j = twice
        same = ("is given twice" if runs[i].resolve() == runs[j].resolve()
                else f"and {runs[j]} are the same results ({sources[i]})")
        raise ReptileFnError(f"{runs[i]} {same}; compare each run once")
    names = [run.name for run in runs]
    for run, source in zip(runs, sources):
        data = json.loads(source.read_text())
        ev = data.get("eval", data)
        own = source.name == SUMMARY or source == run / "eval" / "results.json"  # else: the folder of its checkpoint
        cfg = data.get("config") or _config_dict(run if own else Path(data["checkpoint"]).parent, source)
        guessed = "config" not in data and not own  # an older results file: its run's settings, not its own
        metrics.add(ev["metric"])
        if len(metrics) > 1:
            raise ReptileFnError("the runs are scored by different metrics (accuracy, higher is better, and MSE, lower "
                                 "is better); compare classification runs and regression runs separately")
        key, scale = ("metric", 100.0) if ev["metric"] == "accuracy" else ("loss", 1.0)
        t = cfg["tasks"]
        name = _cell(str(run) if names.count(run.name) > 1 else run.name)
        for init, curve in ev["inits"].items():
            pos = {st: i for i, st in enumerate(curve["steps"])}
            # the evaluation's own K (eval --steps; the curve may run on to the speed table's horizon); an older file
            # without it: the last step it recorded
            last = ev.get("inner_steps", max(curve["steps"]))
            cells = [f"{_num(scale * curve[key]['mean'][pos[c]])} ± {_num(scale * curve[key]['ci95'][pos[c]])}"
                     if c in pos else "" for c in (0, 1, 5, last)]
            k_shot = data.get("k_shot", "?" if guessed else t["k_shot"])
            rows.append(f"| {name} | {_cell(cfg['algorithm'])} | {_cell(_tasks(t))} | {'?' if guessed else _cell(_split(t))}"
                        f" | {curve.get('episodes', '')} | {k_shot} | {_cell(init)} | " + " | ".join(cells) + f" | {last} |")
    header = ("| run | algorithm | tasks | split | episodes | k_shot | init | 0 steps | 1 step | 5 steps | last step "
              "| last |\n|" + "---|" * 12)
    unit = ("query accuracy (%)" if metrics == {"accuracy"} else "query MSE") + (
        ", mean ± 95% CI over held-out episodes; last step: after the evaluation's K steps (the last column: eval --steps "
        "or the config's eval.inner_steps, not the adaptation-speed horizon)")
    return f"{unit}\n\n{header}\n" + "\n".join(rows)


def _results_source(run: Path) -> Path:
    """The results file ``compare_runs`` reads for ``run`` (a run folder, an `eval --out` folder or a results file),
    checked to hold a results table."""
    if run.is_file() and run.suffix == ".json":
        source, fix = run, "rewrite it with `reptile-fn eval`"
    elif not run.is_dir():
        raise ReptileFnError(f"{run} is not a run directory or a results file; pass folders written by `reptile-fn "
                             "train` or `reptile-fn eval`, or their results.json")
    elif (run / "eval" / "results.json").exists() or (run / "results.json").exists():
        source = run / "eval" / "results.json" if (run / "eval" / "results.json").exists() else run / "results.json"
        fix = f"rewrite it with `reptile-fn eval --checkpoint {run}`"
    elif (run / "embed.json").exists():
        raise ReptileFnError(f"{run} holds the results of `reptile-fn embed` (task identification), not a run or an "
                             "evaluation; compare takes run folders, `eval` folders or their results.json")
    elif (run / "predictions.json").exists():
        raise ReptileFnError(f"{run} holds the predictions of `reptile-fn adapt`, not a run or an evaluation; compare "
                             "takes run folders, `eval` folders or their results.json")
    else:
        source, fix = run / SUMMARY, f"rewrite it with `reptile-fn train --out {run} --resume` (it re-evaluates)"
        if not (run / CHECKPOINT).exists():
            fix = f"without the run's {CHECKPOINT} it cannot be rewritten: leave {run} out of the comparison"
        if not source.exists():
            done = (run / CHECKPOINT).exists() and _finished(run)
            raise CheckpointError(f"{run} has no {SUMMARY} (or eval/results.json); "
                                  + (f"{fix}" if done else "train it to the end first"))
    if source.exists() and not source.is_file():  # a FIFO would block the read, a device never end
        kind = "a folder" if source.is_dir() else "not a regular file (a pipe, a socket or a device)"
        raise ReptileFnError(f"{source} is {kind}, not a results file; move it away, then {fix}")
    io.check_readable(source)  # permission denied is reported as such, not as a damaged file
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        problem = _table_problem(data, own=source.name == SUMMARY or source == run / "eval" / "results.json")
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past Python's limit
        problem = "not valid JSON"
    if problem:
        what = "empty" if source.stat().st_size == 0 else f"not a results table of reptile-fn ({problem})"
        raise ReptileFnError(f"{source} is {what}; {fix}")
    return source


def _table_problem(data, *, own: bool) -> str | None:
    """What keeps ``data`` from being a results table ``compare_runs`` can print, or None: every field it reads,
    of the type it needs (a damaged or hand-edited file would otherwise be a traceback or a silently wrong row)."""
    ev = data.get("eval", data) if isinstance(data, dict) else None
    if not isinstance(ev, dict) or ev.get("metric") not in ("accuracy", "mse"):
        return "no eval.metric of accuracy or mse"
    if not isinstance(ev.get("inits"), dict) or not ev["inits"]:
        return "no scored inits"
    if "inner_steps" in ev and not _count(ev["inner_steps"]):
        return "eval.inner_steps is not a count"
    key = "metric" if ev["metric"] == "accuracy" else "loss"
    for init, curve in ev["inits"].items():
        steps = curve.get("steps") if isinstance(curve, dict) else None
        if not isinstance(steps, list) or not steps or not all(_count(t) for t in steps):
            return f"init {init!r} has no list of step counts"
        if any(a >= b for a, b in zip(steps, steps[1:])):
            return f"init {init!r} has step counts that repeat or go down"
        if "inner_steps" in ev and ev["inner_steps"] not in steps:
            return f"eval.inner_steps ({ev['inner_steps']}) is not among init {init!r}'s step counts"
        scores = curve.get(key)
        if not isinstance(scores, dict) or not all(isinstance(scores.get(k), list) and len(scores[k]) == len(steps)
                                                   for k in ("mean", "ci95")):
            return f"init {init!r} has no {key}.mean and {key}.ci95 for each step"
        if not _plausible(ev["metric"], scores):
            return f"init {init!r} has scores that are not finite, a negative CI or an accuracy outside 0 to 1"
        if "episodes" in curve and not (_count(curve["episodes"]) and curve["episodes"] > 0):
            return f"init {init!r} has an episode count that is not a positive integer"
    if "config" not in data:
        return None if own or isinstance(data.get("checkpoint"), str) else "no config and no checkpoint to read it from"
    cfg = data["config"]
    t = cfg.get("tasks") if isinstance(cfg, dict) else None
    if not isinstance(t, dict) or not isinstance(cfg.get("algorithm"), str) or not isinstance(t.get("dataset"), str):
        return "config has no algorithm and tasks.dataset"
    if t["dataset"] == "synthetic":
        ok = isinstance(t.get("families"), list) and all(isinstance(f, str) for f in t["families"])
    else:
        ok = _count(t.get("n_way")) and isinstance(t.get("path") or "", str) and isinstance(t.get("test_split", ""), str)
    if not ok or not _count(data["k_shot"] if "k_shot" in data else t.get("k_shot")):
        return "config.tasks lacks its families, or its n_way, k_shot and split"
    return None


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _plausible(metric: str, scores: dict) -> bool:
    """Whether every mean and CI is a finite number, and an accuracy's mean lies in [0, 1] (a damaged or hand-edited
    file would otherwise show as 'nan ± nan' or 1.0e+11 %)."""
    means, cis = scores["mean"], scores["ci95"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in [*means, *cis])
    return numbers and all(c >= 0 for c in cis) and all(0 <= m <= 1 if metric == "accuracy" else m >= 0 for m in means)


def _tasks(t: dict) -> str:
    """What the run was scored on: its synthetic families, or its data set (for your own data, the file or folder
    evaluated: ``eval --data`` scores other data than the run's training set) and way."""
    if t["dataset"] == "synthetic":
        return ", ".join(t["families"])
    data = f" {Path(t['path']).name}" if t.get("path") else ""
    return f"{t['dataset']}{data} {t['n_way']}-way"


def _split(t: dict) -> str:
    """The held-out split scored: test, val, evaluation (Omniglot), banking77, or all (every class of --data)."""
    return "" if t["dataset"] == "synthetic" else t.get("test_split", "test")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")  # a | or a line break would split the row


def _config_dict(run_dir: Path, source: Path) -> dict:
    """The config of the run ``source`` belongs to (its folder's config.yaml or checkpoint)."""
    try:
        return C.to_dict(stored_config(run_dir))
    except CheckpointError:
        raise ReptileFnError(f"{source} records no config and its run folder {run_dir} holds none (gone or moved), so "
                             "compare cannot label its rows; leave it out, or rewrite it with `reptile-fn eval`") from None


def _finished(run: Path) -> bool:
    """Whether the run in ``run`` trained to its last meta-iteration (its summary can be written again)."""
    try:
        saved = Saved(run / CHECKPOINT)
    except ReptileFnError:
        return False
    return saved.iteration >= saved.cfg.meta_iterations
