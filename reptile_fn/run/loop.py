"""The meta-training loop: sample -> step -> log -> evaluate -> checkpoint, and resume.

Read ``train`` top to bottom: it starts (or resumes) a run, then each meta-iteration draws a batch of
tasks and takes one compiled meta-step; every ``log_every`` iterations it writes the window's mean
metrics to ``metrics.jsonl`` and tells the callbacks (a progress bar); every ``eval.every`` it scores
held-out episodes; every ``checkpoint_every`` it saves. At the end it evaluates the meta-learned init
against a baseline and writes ``summary.json``.

Randomness: ``seed`` fixes the initialization, the training-task pool, one key per meta-iteration
and the evaluation episodes, so a resumed run equals an uninterrupted one.

Under ``mlx.launch`` every process runs this loop on its block of each meta-batch (the meta-step
averages over processes through the ``Reduce`` it was built with); only rank 0 writes files, logs
and evaluates.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import mlx.core as mx

from reptile_fn import checkpoint, distributed, io
from reptile_fn import config as C
from reptile_fn import tree as T
from reptile_fn.algorithms import DEFAULTS, LOCAL, Reduce
from reptile_fn.errors import CheckpointError, ConfigError, TrainingDivergedError
from reptile_fn.run import progress as P
from reptile_fn.run.build import Run, build, run_keys, settled
from reptile_fn.run.files import (ADAPTER_DIR, CHECKPOINT, CONFIG, METRICS, SUMMARY, Saved, exclusive, forget_start,
                                  read_metrics, remove_stale_temporaries, require_finite, truncate_metrics)
from reptile_fn.run.report import evaluate_init, final_evaluation, peft_summary
from reptile_fn.signals import Terminated, shielded, sigterm_as_interrupt


class Progress(NamedTuple):
    """Where the loop stands: replaced as a whole each iteration, so an interrupt sees a consistent state."""

    params: dict
    state: dict
    iteration: int
    window: dict  # metric sums since the last log record (lazy device arrays)
    n_window: int


def train(cfg: C.Config | None, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          stop_at: int | None = None, log: Callable[[str], None] = print, callbacks: tuple = ()) -> dict:
    """Meta-train (or resume) into ``out_dir``; returns the summary dict (also written as JSON).

    ``stop_at`` ends early after that meta-iteration (with a checkpoint), as an interruption would.
    ``callbacks``: objects with ``on_log(iteration, record)`` and ``close()``, told of every metrics
    record, and optionally ``on_step(iteration)``, told of every meta-iteration (a progress bar is one). Launched by ``mlx.launch``, each process adapts its block of every
    meta-batch and only rank 0 writes files and output; the summary of another rank has no evaluation.
    """
    w = distributed.world()
    out = Path(out_dir)
    stack = contextlib.ExitStack()
    if w.is_main:
        stack.enter_context(exclusive(out))
    try:
        run, at, eval_due = start(cfg, out, resume=resume, w=w, log=log)
    except BaseException as e:
        stack.__exit__(type(e), e, e.__traceback__)  # tells exclusive() the start failed (close() would not)
        raise
    cfg = run.cfg
    iteration_keys = mx.random.split(run_keys(cfg.seed).train, cfg.meta_iterations)
    end = min(cfg.meta_iterations, stop_at) if stop_at is not None else cfg.meta_iterations
    step = _iteration(run, w)
    saver = _Saver(run, out, w, last_good=at.iteration if resume else None, eval_due=eval_due)
    waiting = _watchdog(w, saver, lambda: at.iteration)
    with waiting():
        distributed.check_same(w, f"{C.dump(cfg)}\nstart: {at.iteration}", "config or checkpoint")
    callbacks = (*callbacks, *_progress(progress, w, at.iteration, cfg, log))
    metrics_file = open(out / METRICS if w.is_main else os.devnull, "a")
    t0, first = time.perf_counter(), at.iteration
    stack.enter_context(sigterm_as_interrupt())
    evaluated = None  # the last iteration whose held-out evaluation is in the log
    try:
        try:
            if saver.eval_due:  # the run stopped at an evaluation's iteration before the evaluation was logged
                evaluated = _evaluate(run, at.params, at.state, first, metrics_file)
            for i in range(first, end):
                params, state, metrics = step(at.params, at.state, iteration_keys[i])
                window = metrics if not at.window else {k: at.window[k] + metrics[k] for k in metrics}
                if w.group is None:
                    mx.async_eval(params, state, window)
                else:
                    with waiting():  # a lost peer raises here, or (MLX 0.32) blocks until the watchdog ends it
                        mx.eval(params, state, window)
                at = Progress(params, state, i + 1, window, at.n_window + 1)  # one assignment: Ctrl-C safe
                it = at.iteration
                for c in callbacks:
                    getattr(c, "on_step", _nothing)(it)
                if it % cfg.log_every == 0 or it == cfg.meta_iterations:
                    record = {"iteration": it, **{k: float(v) / at.n_window for k, v in at.window.items()}}
                    at = at._replace(window={}, n_window=0)
                    if not bool(T.all_finite(params)) or not all(math.isfinite(v) for v in record.values()):
                        raise saver.diverged(it)
                    _write(metrics_file, record)
                    for c in callbacks:
                        c.on_log(it, record)
                if _eval_at(cfg, it):
                    evaluated = _evaluate(run, params, state, it, metrics_file)
                if it % cfg.checkpoint_every == 0 or it == end:
                    metrics_file.flush()
                    saver.save(at)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (a scheduler, kill): save what is done
            metrics_file.flush()
            saver.stopped(at, first, evaluated, stop, log)
            raise  # the command line turns it into one error line and exit status 143 (SIGTERM) or 130 (Ctrl-C)
        except RuntimeError as e:
            if not distributed.lost_peer(e):
                raise
            raise distributed.DistributedError(saver.lost(at.iteration, str(e))) from e
        finally:
            for c in callbacks:
                c.close()
            metrics_file.close()
    except BaseException as e:
        if not resume and w.is_main:
            forget_start(out)  # it failed before its first checkpoint: what its start wrote goes
        stack.__exit__(type(e), e, e.__traceback__)  # and exclusive() removes the folder if it made it
        raise
    stack.close()
    return finish(run, out, at, seconds=time.perf_counter() - t0, done=end - first, w=w)


def start(cfg: C.Config | None, out: Path, *, resume: bool, w: distributed.World,
          log: Callable[[str], None]) -> tuple[Run, Progress, bool]:
    """Build the run and its starting point: a fresh run in ``out``, or its last checkpoint with ``resume``; and
    whether the evaluation of that iteration is still to be logged (``Saved.eval_due``)."""
    ckpt_path = out / CHECKPOINT
    if resume:
        saved = Saved(ckpt_path)
        saved.check_same_config(cfg if cfg is None else settled(cfg))  # the command that started it, as it was recorded
        cfg = saved.cfg
        run = build(cfg, _reduce(cfg, w))
        params = checkpoint.restore(saved.arrays, "params", run.rebuilt_init, source=str(ckpt_path))
        state = checkpoint.restore(saved.arrays, "state", run.meta.init(params), source=str(ckpt_path))
        require_finite(params, ckpt_path)
        counted = state.get("iteration") if isinstance(state, dict) else None
        if counted is not None and counted.size == 1 and int(counted.item()) != saved.iteration:
            raise CheckpointError(f"{ckpt_path} records meta-iteration {saved.iteration} in its metadata but "
                                  f"{int(counted.item())} in its state: the file was edited or damaged; resume from a "
                                  "checkpoint written by `reptile-fn train`")
        if w.is_main:
            remove_stale_temporaries(out)
            truncate_metrics(out / METRICS, saved.iteration, eval_due=saved.eval_due)
            io.write_text(out / CONFIG, C.dump(cfg))  # back, if it was deleted (an edit was refused)
            log(f"resuming {out} at meta-iteration {saved.iteration}/{cfg.meta_iterations}")
        return run, Progress(params, state, saved.iteration, saved.window, saved.n_window), saved.eval_due
    cfg = settled(cfg or C.Config())
    if ckpt_path.exists():
        raise ConfigError(f"{out} already holds a run ({ckpt_path.name}); pass --resume to continue it "
                          "or choose another --out")
    if (out / METRICS).is_file() and read_metrics(out / METRICS):  # a run's log without its checkpoint: starting over would overwrite it
        raise ConfigError(f"{out} holds the log of a run ({METRICS}) but no {CHECKPOINT} to continue it from; choose "
                          f"another --out, or move {METRICS} away to start over in this folder")
    run = build(cfg, _reduce(cfg, w))
    params = run.initial_params(run_keys(cfg.seed).init)
    if w.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        io.write_text(out / CONFIG, C.dump(cfg))
        (out / METRICS).unlink(missing_ok=True)
    return run, Progress(params, run.meta.init(params), 0, {}, 0), False


def finish(run: Run, out: Path, at: Progress, *, seconds: float, done: int, w: distributed.World) -> dict:
    """The run's summary: speed, and at the last meta-iteration the final evaluation (written as summary.json)."""
    cfg = run.cfg
    summary = {
        "run": str(out),
        "iteration": at.iteration,
        "meta_iterations": cfg.meta_iterations,
        "seconds": round(seconds, 3),
        "session_iterations": done,  # this process's share (a resumed run did the rest before)
        "meta_steps_per_s": float(f"{done / seconds:.3g}") if done else None,
        "examples_per_s": float(f"{done * _examples_per_step(run) / seconds:.3g}") if done else None,
        "processes": w.size,
        "rank": w.rank,
        "config": C.to_dict(cfg),
    }
    if not w.is_main:
        return summary
    if run.peft is not None:
        summary["peft"] = peft_summary(run, at.params)
    if not done and (out / SUMMARY).is_file():  # a finished run resumed: keep the speed it was trained at
        try:
            previous = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # damaged: rewritten whole below
            previous = {}
        summary.update({k: previous[k] for k in ("seconds", "meta_steps_per_s", "examples_per_s")
                        if isinstance(previous, dict) and k in previous})
    if at.iteration == cfg.meta_iterations:
        summary["eval"] = final_evaluation(run, at.params, at.state)
        try:
            io.write_text(out / SUMMARY, json.dumps(summary, indent=2))
        except OSError as e:  # a full disk: the training is kept, only the summary is missing
            raise OSError(e.errno, f"{e.strerror} (the run's checkpoint is saved; once there is space, `reptile-fn train "
                                   f"--out {out} --resume` writes the summary)", e.filename) from e
    return summary


def _reduce(cfg: C.Config, w: distributed.World) -> Reduce:
    """The meta-step's view of the processes: the mean over them, and how many blocks the meta-batch has."""
    distributed.shard(cfg.meta_batch_size, w)  # checks that the meta-batch splits evenly
    return LOCAL if w.group is None else Reduce(partial(distributed.mean, group=w.group), w.size)


def _iteration(run: Run, w: distributed.World) -> Callable:
    """One compiled meta-iteration from its key: sample the meta-batch, take the step (this process's block)."""
    n = run.cfg.meta_batch_size
    block = distributed.shard(n, w)

    @mx.compile
    def iteration(params, state, key):
        sample_key, step_key = mx.random.split(key)
        batch = run.sample_train(sample_key, n)
        if w.group is not None:
            # every process draws the whole meta-batch (pure in the key, a small share of a step's cost)
            # and adapts its own block with those tasks' keys, so P processes compute what one computes
            batch = type(batch)(*(x[block] for x in batch))
            step_key = mx.random.split(step_key, n)[block]
        return run.meta.step(params, state, batch, step_key)

    return iteration


class _Saver:
    """Checkpoints (and a PEFT run's adapter files) of the run in ``out``; knows the last good one."""

    def __init__(self, run: Run, out: Path, w: distributed.World, last_good: int | None, eval_due: bool = False):
        self.run, self.out, self.w, self.last_good, self.eval_due = run, out, w, last_good, eval_due
        self.path = out / CHECKPOINT
        self.reference = run.rebuilt_init

    def save(self, at: Progress, *, eval_due: bool = False) -> None:
        """Checkpoint ``at``; ``eval_due``: the evaluation of its iteration is not in the log yet (a resume runs it)."""
        if not bool(T.all_finite(at.params)):
            raise self.diverged(at.iteration)
        if self.w.is_main:
            # The open log window travels with the checkpoint, so a resumed run logs the same means.
            window = {"count": at.n_window, "sums": {k: float(v) for k, v in at.window.items()}}
            meta = {"config": C.to_dict(self.run.cfg), "iteration": at.iteration, "log_window": window,
                    "shapes": [list(d) if isinstance(d, tuple) else d for d in self.run.shapes],
                    **({"eval_due": True} if eval_due else {})}
            checkpoint.save(self.path, at.params, at.state, meta, reference=self.reference)
            if self.run.peft is not None:
                save_adapter_files(self.run, at.params, self.out / ADAPTER_DIR)
        self.last_good = at.iteration

    def stopped(self, at: Progress, first: int, evaluated: int | None, stop: KeyboardInterrupt, log) -> None:
        """Checkpoint a run stopped by Ctrl-C or SIGTERM, if it got anywhere, and say how to go on."""
        if at.iteration > first and bool(T.all_finite(at.params)) and self.w.is_main:
            with shielded():  # a second Ctrl-C during the save must not cut it short
                self.save(at, eval_due=_eval_at(self.run.cfg, at.iteration) and evaluated != at.iteration)
            why = "terminated" if isinstance(stop, Terminated) else "interrupted"
            log(f"\n{why}: checkpoint saved at meta-iteration {at.iteration}; continue with --resume")

    def kept(self) -> str:
        return (f"the last good checkpoint ({self.path}, meta-iteration {self.last_good}) is kept"
                if self.last_good is not None else "no checkpoint had been written yet")

    def diverged(self, it: int) -> TrainingDivergedError:
        cfg = self.run.cfg
        outer_lr = DEFAULTS[cfg.algorithm]["outer_lr"] if cfg.outer_lr is None else cfg.outer_lr
        final = cfg.outer_lr_final if cfg.outer_lr_final is not None and cfg.outer_lr_final > outer_lr else None
        also = f", outer_lr_final ({final}: the outer rate is annealed towards it)" if final is not None else ""
        return TrainingDivergedError(f"parameters or losses became NaN/Inf by meta-iteration {it}; {self.kept()}. "
                                     f"Lower inner_lr ({cfg.inner_lr}){also} or outer_lr ({outer_lr}) and train again")

    def lost(self, it: int, reason: str) -> str:
        w = self.w
        return (f"process {w.rank} of {w.size} lost contact with the others after meta-iteration {it} "
                f"({reason}); {self.kept()}. Check that every process is alive and reachable, then relaunch all "
                "of them with --resume")


def _watchdog(w: distributed.World, saver: _Saver, iteration: Callable[[], int]):
    """A context manager marking waits on the other processes (a no-op for one process)."""
    if w.group is None:
        return contextlib.nullcontext
    return distributed.Watchdog(
        distributed.peer_timeout(),
        lambda t: saver.lost(iteration(), f"no reply in {t:.0f} s; {distributed.PEER_TIMEOUT_ENV} sets the limit")).waiting


def _progress(enabled: bool, w: distributed.World, first: int, cfg: C.Config, log: Callable[[str], None]) -> tuple:
    """Rank 0's progress callback: a bar on a terminal; lines for a multi-process run off one."""
    total = cfg.meta_iterations
    if not w.is_main:
        return ()
    if w.group is None:
        return (P.progress(enabled, first, total, log),)
    log(f"{w.size} processes, {cfg.meta_batch_size // w.size} of each meta-batch's {cfg.meta_batch_size} "
        "tasks per process")
    return (P.progress(True, first, total) if enabled else P.Lines(log, total),)


def save_adapter_files(run: Run, params, directory: Path) -> None:
    """``adapters.safetensors`` + ``adapter_config.json``: the meta-learned leaves of a PEFT run, tied to its base."""
    from reptile_fn import peft

    cfg, p = run.cfg, run.cfg.peft
    learned = [path for path in T.paths(params) if run.meta_trainable(path)]
    config = {"method": p.method, "rank": p.rank, "scale": p.scale, "targets": list(p.targets),
              "ranks": peft.ranks(params.get("adapter", {})), "train_head": p.train_head,
              "meta_learn_base": p.meta_learn_base,
              "base_source": p.base if p.base != "pretrain" else
              f"pretrain (seed {cfg.seed}, families {list(p.base_families or cfg.tasks.families)}, "
              f"{p.base_pretrain_iterations} iterations)",
              "model": C.to_dict(cfg.model)}
    peft.save_adapters(directory, params, learned, config)


def _examples_per_step(run: Run) -> int:
    """Support examples adapted per meta-step: meta-batch × (inner batch or support set) × inner steps."""
    cfg = run.cfg
    support = int(run.sample_train(mx.random.key(0), 1).support_x.shape[1])
    return cfg.meta_batch_size * min(cfg.inner_batch_size or support, support) * cfg.inner_steps


def _nothing(*_) -> None:
    pass


def _evaluate(run: Run, params, state, it: int, metrics_file) -> int:
    """Score held-out episodes at meta-iteration ``it`` and log the result; returns ``it``. Every process evaluates
    (rank 0 records it), so none waits on another's evaluation."""
    curve = evaluate_init(run, params, run_keys(run.cfg.seed).eval_during, run.cfg.eval.during_training_episodes,
                          state=state)
    _write(metrics_file, {"iteration": it, "eval": _final_point(curve)})
    return it


def _eval_at(cfg: C.Config, it: int) -> bool:
    """Whether meta-iteration ``it`` ends with a held-out evaluation (the last one has the final evaluation)."""
    return it > 0 and it % cfg.eval.every == 0 and it != cfg.meta_iterations


def _write(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()  # so that `tail -f metrics.jsonl` follows a long run


def _final_point(curve: dict) -> dict:
    return {name: curve[name]["mean"][-1] for name in ("loss", "metric") if name in curve}
