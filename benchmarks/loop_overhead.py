"""What the training loop adds to the meta-step: `reptile-fn train` against the bare compiled step, same settings.

    uv run python benchmarks/loop_overhead.py --data-dir DIR [--config omniglot_5w1s] [--iterations 300]
        [--json research/perf/loop_overhead.json]

Three figures, meta-steps/s, from the same config (default: configs/omniglot_5w1s.yaml, the paper's Omniglot
5-way settings: conv4 with batch norm, inner Adam kept across tasks, meta-batch 5):

- **step**: ``run.meta.step`` compiled, on pre-sampled meta-batches cycled (what `bench`'s W2 times, at these
  settings);
- **loop**: ``reptile_fn.run.train`` for ``--iterations`` meta-iterations (sampling inside the compiled
  iteration, logging every ``log_every``, checkpoints, progress off), its time from the first iteration to the
  last (start-up, the final evaluation and the summary are not counted);
- **loop, evaluation amortised**: the loop with the config's evaluation during training added at its rate
  (``eval.during_training_episodes`` episodes every ``eval.every`` iterations, timed once here).

The target (issue 23): the loop at >= 0.9x the step. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import reptile_fn  # before mlx.core: importing it loads OpenBLAS on Linux
from reptile_fn import config as C
from reptile_fn import io
from reptile_fn import run as R

import mlx.core as mx


def step_rate(run, iterations: int, pool: int = 8) -> float:
    n = run.cfg.meta_batch_size
    batches = [run.sample_train(mx.random.key(100 + i), n) for i in range(pool)]
    mx.eval(batches)
    step = mx.compile(run.meta.step)
    params = run.initial_params(R.run_keys(run.cfg.seed).init)
    state = run.meta.init(params)
    keys = mx.random.split(mx.random.key(7), iterations + 20)
    for i in range(20):  # warm-up: compile, and let the allocator settle
        params, state, metrics = step(params, state, batches[i % pool], keys[i])
        mx.eval(params, state, metrics)
    t = time.perf_counter()
    for i in range(iterations):
        params, state, metrics = step(params, state, batches[i % pool], keys[20 + i])
        mx.async_eval(params, state, metrics)
    mx.eval(params, state, metrics)
    return iterations / (time.perf_counter() - t)


class Clock:
    """A train callback: the time of the first and last meta-iterations."""

    def __init__(self):
        self.times = []

    def on_step(self, iteration: int) -> None:
        self.times.append(time.perf_counter())

    def on_log(self, iteration: int, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def loop_rate(cfg, iterations: int) -> float:
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        R.train(cfg, out, stop_at=iterations, callbacks=(clock,), progress=False)
    skip = min(20, iterations // 4)  # the first iterations compile
    return (len(clock.times) - 1 - skip) / (clock.times[-1] - clock.times[skip])


def eval_seconds(run) -> float:
    params = run.initial_params(R.run_keys(run.cfg.seed).init)
    state = run.meta.init(params)
    t = time.perf_counter()
    R.evaluate_init(run, params, R.run_keys(run.cfg.seed).eval_during, run.cfg.eval.during_training_episodes, state=state)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="omniglot_5w1s")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    overrides = [f"tasks.data_dir={args.data_dir}"] if args.data_dir else []
    cfg = C.load(args.config, overrides + ["eval.every=10000000", "checkpoint_every=10000000"])
    run = R.build(cfg)
    steps, loops = [], []
    for _ in range(args.repeats):  # alternate, so drifts in the machine's speed hit both
        steps.append(step_rate(run, args.iterations))
        loops.append(loop_rate(cfg, args.iterations))
        print(f"step {steps[-1]:.2f}/s, loop {loops[-1]:.2f}/s", flush=True)
    base = C.load(args.config, overrides)
    evaluation = eval_seconds(run)
    step, loop = statistics.median(steps), statistics.median(loops)
    per_iteration = 1 / loop + evaluation / base.eval.every
    result = {"config": args.config, "iterations": args.iterations, "step_per_s": round(step, 3),
              "loop_per_s": round(loop, 3), "loop_with_evaluation_per_s": round(1 / per_iteration, 3),
              "evaluation_s": round(evaluation, 2), "eval_every": base.eval.every,
              "eval_episodes": base.eval.during_training_episodes, "loop_vs_step": round(loop / step, 3),
              "loop_with_evaluation_vs_step": round(1 / per_iteration / step, 3), "runs": {"step": steps, "loop": loops},
              "blas": reptile_fn.blas_status(), "mlx": mx.__version__, "date": time.strftime("%Y-%m-%d"),
              "command": "uv run python benchmarks/loop_overhead.py " + " ".join(sys.argv[1:])}
    print(f"{args.config}: step {step:.2f} meta-steps/s, loop {loop:.2f} ({loop / step:.2f}x), with evaluation "
          f"amortised {1 / per_iteration:.2f} ({1 / per_iteration / step:.2f}x; {evaluation:.1f} s every "
          f"{base.eval.every} iterations)")
    if args.json:
        io.write_json(args.json, result)


if __name__ == "__main__":
    main()
