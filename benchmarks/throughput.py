"""Meta-step throughput of reptile_fn against JAX and PyTorch on the same math.

Workloads (float32, identical in every framework; see benchmarks/README.md):
  W1  sine: Reptile, MLP 1-40-40-1 ReLU, K=10, 5 inner SGD steps (lr 0.02) on the full support
      set, meta-batch 8, outer step 0.1.
  W2  Omniglot-shaped: Reptile on 5-way tasks, 28x28x1 inputs, conv4 with stride-2 3x3 convs
      (no norm), 50 support images, inner batch 10, 5 inner SGD steps, meta-batch 5.
  W3  text: Reptile on rank-4 LoRA (every layer's query and value) + a linear head over all-MiniLM-L6-v2,
      5-way 5-shot tasks of 16-token sentences, 5 inner Adam steps (lr 0.01), meta-batch 2, outer step 0.01.
      Peer: PyTorch + transformers.
  W4  evaluation: 100 Omniglot-shaped 5-way 1-shot episodes, conv4 with batch norm, 50 inner Adam steps
      (lr 1e-3, betas (0, 0.999)) on the 5 support images, then query loss and accuracy (25 images);
      figures in episodes/s. Peer: JAX.

Variants of reptile_fn's step: serial reference (Python loop over tasks, eager), vmap (eager),
vmap+compile (the training path), unrolled+compile (Python loop over tasks inside one compiled
step), fused (N meta-iterations per compiled call); W3 times the two compiled ones, W4 the library's
evaluation (evaluate.per_episode_curves). Figures are the median meta-steps/s (W4: episodes/s) over
repeated timed blocks after warm-up; peak memory is MLX's allocator peak.

    python benchmarks/throughput.py [--peers] [--device cpu|gpu] [--json FILE] [--quick]
    reptile-fn bench [same options]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import reptile_fn  # reptile_fn before mlx.core: importing it loads OpenBLAS on Linux
from reptile_fn import io, optim
from reptile_fn.algorithms import ALGORITHMS, DEFAULTS
from reptile_fn.algorithms.base import compile_iterations
from reptile_fn.coerce import clipped
from reptile_fn.config.limits import INT32_MAX, LIMITS, NO_LIMITS
from reptile_fn.episode import Episode
from reptile_fn.inner import InnerLoop
from reptile_fn.losses import cross_entropy, mse
from reptile_fn.models import conv4, mlp
from reptile_fn.tasks import make_distribution

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: makes benchmarks.peers (the JAX/PyTorch peers) importable

POOL = 8  # pre-sampled meta-batches cycled through, so sampling is not timed (as in the peers)
WORKLOADS = {
    "W1": dict(meta_batch_size=8, scaling=(1, 2, 4, 8, 16, 32, 64)),
    "W2": dict(meta_batch_size=5, scaling=(1, 2, 5, 10, 20, 32)),
    "W3": dict(meta_batch_size=2, scaling=(1, 2, 4), variants=("vmap+compile", "unrolled+compile")),
    "W4": dict(meta_batch_size=100, scaling=(), variants=("per_episode_curves",)),  # "meta-batch": episodes
}
FLAGS = {"serial": (False, False), "vmap": (True, False), "unrolled+compile": (False, True)}  # (batched, compiled)


def workload(name: str, meta_batch_size: int, conv_impl: str = "auto"):
    """(model, loss, inner loop, Reptile's outer step size, list of pre-sampled meta-batches)."""
    if name == "W1":
        tasks = make_distribution("sine", k_shot=10, query_size=10, num_train_tasks=0, seed=0)
        batches = [tasks.sample_train(mx.random.key(i), meta_batch_size) for i in range(POOL)]
        return mlp(1, 1, hidden=40, depth=2), mse, InnerLoop(lr=0.02, steps=5), 0.1, batches
    if name == "W2":
        rng = np.random.default_rng(0)
        batches = []
        for _ in range(POOL):
            x = mx.array(rng.uniform(size=(meta_batch_size, 50, 28, 28, 1)).astype(np.float32))
            y = mx.array(rng.integers(0, 5, size=(meta_batch_size, 50)).astype(np.int32))
            batches.append(Episode(x, y, x[:, :10], y[:, :10]))  # a query of 10 images for the MAML family
        inner = InnerLoop(lr=1e-3, steps=5, batch_size=10)
        return conv4((28, 28, 1), 5, conv_impl=conv_impl), cross_entropy, inner, 1.0, batches
    raise SystemExit(f"unknown workload {name!r}; use W1, W2, W3 or W4")


def time_blocks(call: Callable[[int], object], steps_per_call: int, *, repeats: int, min_block_s: float,
                warmup: int) -> list[float]:
    """meta-steps/s of repeated blocks; each block lasts at least min_block_s and ends with a sync."""
    for i in range(warmup):
        mx.eval(call(i))
    t = time.perf_counter()
    mx.eval(call(warmup))
    per_call = max(time.perf_counter() - t, 1e-6)
    calls = max(1, int(min_block_s / per_call))
    rates = []
    for r in range(repeats):
        t = time.perf_counter()
        out = None
        for i in range(calls):
            out = call(i)
            mx.async_eval(out)
        mx.eval(out)
        rates.append(calls * steps_per_call / (time.perf_counter() - t))
    return rates


def row(name: str, variant: str, size: int, rates: list[float]) -> dict:
    from benchmarks.peers.common import UNITS

    return {
        "framework": "reptile_fn", "version": reptile_fn.__version__, "variant": variant,
        "workload": name, "meta_batch_size": size, "device": str(mx.default_device()),
        "meta_steps_per_s": statistics.median(rates), "samples": rates,
        "peak_memory_mb": mx.get_peak_memory() / 2**20, "unit": UNITS.get(name, "meta-steps"),
    }


def run_text(variant: str, meta_batch_size: int, *, repeats: int, min_block_s: float) -> dict:
    """W3: reptile_fn's Reptile LoRA meta-step on all-MiniLM-L6-v2 (benchmarks/peers/reptile_side.py builds it)."""
    from benchmarks.peers import reptile_side

    batched, compiled = FLAGS.get(variant, (True, True))
    meta, params, batches = reptile_side.text_step(meta_batch_size, batched=batched, compiled=compiled)
    keys = [mx.random.key(i) for i in range(len(batches))]
    box = {"params": params, "state": meta.init(params)}
    mx.eval(batches, keys, box)

    def call(i):
        box["params"], box["state"], _ = meta.step(box["params"], box["state"], batches[i % len(batches)],
                                                   keys[i % len(keys)])
        return box["params"], box["state"]

    mx.reset_peak_memory()
    rates = time_blocks(call, 1, repeats=repeats, min_block_s=min_block_s, warmup=1)  # seconds a step: one warm-up
    return row("W3", variant, meta_batch_size, rates)


def run_eval(n_episodes: int, *, repeats: int, min_block_s: float) -> dict:
    """W4: the library's evaluation (evaluate.per_episode_curves, query scored after the 50th step), in episodes/s.

    Each call is a whole evaluation of `n_episodes` episodes, as the library runs one: per_episode_curves builds its
    compiled episode-batched step per call, so that cost (tens of ms) is in every timed call (the peer's jit: once)."""
    from benchmarks.peers import reptile_side

    loop, model, params, episodes = reptile_side.eval_setup(n_episodes)
    mx.eval(params, episodes)

    def call(i):
        reptile_side.evaluate(loop, model, params, episodes)  # returns numpy: the evaluation has finished
        return []

    mx.reset_peak_memory()
    rates = time_blocks(call, n_episodes, repeats=repeats, min_block_s=min_block_s, warmup=1)
    return row("W4", "per_episode_curves", n_episodes, rates)


def run_variant(name: str, variant: str, meta_batch_size: int, *, repeats: int, min_block_s: float,
                fuse_n: int = 10, conv_impl: str = "auto", algorithm: str = "reptile") -> dict:
    if name == "W3":
        return run_text(variant, meta_batch_size, repeats=repeats, min_block_s=min_block_s)
    if name == "W4":
        return run_eval(meta_batch_size, repeats=repeats, min_block_s=min_block_s)
    model, loss, inner, outer_lr, batches = workload(name, meta_batch_size, conv_impl)
    params = model.init(mx.random.key(0))
    keys = [mx.random.key(i) for i in range(POOL)]
    mx.eval(batches, keys, params)
    batched, compiled = FLAGS.get(variant, (True, True))
    if algorithm != "reptile":  # the same inner loop; the MAML family's outer step is Adam at 1e-3
        outer_lr = 1e-3
    outer = optim.make(DEFAULTS[algorithm]["outer_optimizer"], outer_lr)  # constant rate: Reptile SGD, the MAML family Adam
    meta = ALGORITHMS[algorithm](model.apply, loss, inner, outer, batched=batched, compiled=compiled)
    box = {"params": params, "state": meta.init(params)}
    steps_per_call = 1

    if variant.startswith("fused"):
        run = compile_iterations(meta.step, fuse_n)
        stacked = Episode(*(mx.stack([b[j] for b in (batches * fuse_n)[:fuse_n]]) for j in range(4)))
        stacked_keys = mx.stack((keys * fuse_n)[:fuse_n])
        mx.eval(stacked, stacked_keys)
        steps_per_call = fuse_n

        def call(i):
            box["params"], box["state"], m = run(box["params"], box["state"], stacked, stacked_keys)
            return box["params"], box["state"]
    else:
        def call(i):
            box["params"], box["state"], m = meta.step(box["params"], box["state"], batches[i % POOL], keys[i % POOL])
            return box["params"], box["state"]

    slow = variant in ("serial", "vmap")
    mx.reset_peak_memory()
    rates = time_blocks(call, steps_per_call, repeats=max(2, repeats // 2) if slow else repeats,
                        min_block_s=min_block_s, warmup=1 if slow else 3)
    return {
        "framework": "reptile_fn", "version": reptile_fn.__version__,
        "variant": variant if algorithm == "reptile" else f"{algorithm} {variant}",
        "workload": name, "meta_batch_size": meta_batch_size, "device": str(mx.default_device()),
        "meta_steps_per_s": statistics.median(rates), "samples": rates,
        "peak_memory_mb": mx.get_peak_memory() / 2**20,
    }


def run_peers(name: str, meta_batch_size: int, device: str, *, repeats: int, min_block_s: float) -> list[dict]:
    results = []
    for module in ("jax_peer", "torch_peer"):
        try:
            peer = __import__(f"benchmarks.peers.{module}", fromlist=["run", "available"])
        except ImportError as e:
            print(f"  (skipping {module}: {e})", file=sys.stderr)
            continue
        if not peer.available():
            print(f"  (skipping {module}: framework not importable)", file=sys.stderr)
            continue
        if name not in peer.WORKLOAD_VARIANTS:  # this framework has no peer of the workload
            continue
        if not peer.available(name):
            print(f"  (skipping {module} on {name}: its extra packages or files are missing; see benchmarks/README.md)",
                  file=sys.stderr)
            continue
        try:
            results += peer.run(name, meta_batch_size, device=device, repeats=repeats, min_block_s=min_block_s)
        except Exception as e:  # a peer failing must not lose the other figures
            print(f"  ({module} failed on {name}: {type(e).__name__}: {e})", file=sys.stderr)
    return results


def gpu_name() -> str | None:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def environment(device: str) -> dict:
    return {
        "gpu": gpu_name() if device == "gpu" else None,
        "machine": platform.machine(), "system": platform.system(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "mlx": mx.__version__,
        "numpy": np.__version__, "device": str(mx.default_device()), "requested_device": device,
        "blas": reptile_fn.blas_status(), "date": time.strftime("%Y-%m-%d"),
    }


def table(rows: list[dict], best_peer: dict[str, float]) -> str:
    """The ratio tables: meta-step workloads (W1-W3) in meta-steps/s, then evaluation (W4) in episodes/s."""
    steps = [r for r in rows if r.get("unit", "meta-steps") == "meta-steps"]
    episodes = [r for r in rows if r.get("unit", "meta-steps") == "episodes"]
    parts = [unit_table(steps, best_peer)] if steps else []
    if episodes:
        parts.append(unit_table(episodes, best_peer, size="E", unit="episodes/s", seconds_per=100))
    return "\n\n".join(parts)


def unit_table(rows: list[dict], best_peer: dict, *, size: str = "M", unit: str = "meta-steps/s",
               seconds_per: int | None = None) -> str:
    extra = f"{f's/{seconds_per} ep.':>13}" if seconds_per else ""
    head = f"{'workload':<9}{size:>4}  {'framework / variant':<38}{unit:>13}{extra}{'peak MB':>9}{'vs best peer':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        peer = best_peer.get((r["workload"], r["meta_batch_size"]))
        ratio = f"{r['meta_steps_per_s'] / peer:.2f}x" if peer and r["framework"] == "reptile_fn" else ""
        mem = f"{r['peak_memory_mb']:.1f}" if "peak_memory_mb" in r else ""
        per = f"{seconds_per / r['meta_steps_per_s']:>13.2f}" if seconds_per else ""
        rate = r["meta_steps_per_s"]
        lines.append(f"{r['workload']:<9}{r['meta_batch_size']:>4}  {r['framework'] + ' ' + r['variant']:<38}"
                     f"{f'{rate:.1f}' if rate >= 10 else f'{rate:.3g}':>13}{per}{mem:>9}{ratio:>14}")
    return "\n".join(lines)


def workload_variants(name: str, variants: list[str]) -> list[str]:
    """reptile_fn's variants timed on a workload: W1, W2 all asked for; W3 the compiled ones asked for; W4 its one."""
    if name == "W4":
        return list(WORKLOADS["W4"]["variants"])
    return [v for v in variants if v in WORKLOADS[name].get("variants", variants)]


def text_missing() -> str | None:
    """Why W3 cannot run here (the text extra or the encoder's files missing), or None."""
    from reptile_fn.errors import ReptileFnError
    from reptile_fn.text.encoder import encoder_path, load_tokenizer

    try:
        load_tokenizer(encoder_path(None))
    except ReptileFnError as e:
        return str(e)
    return None


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line (through `reptile-fn bench`: one `error:` line), not a usage block."""

    def error(self, message: str):
        raise SystemExit(f"{message}; `{self.prog} --help` lists the options")


VARIANTS = ("serial", "vmap", "vmap+compile", "unrolled+compile", "fused")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = _Parser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="W1,W2,W3,W4",
                    help="comma list of W1 (sine MLP), W2 (Omniglot conv4), W3 (MiniLM LoRA), W4 (Omniglot evaluation); "
                         "W3 needs the text extra and all-MiniLM-L6-v2's files (skipped, with a note, without them)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where MLX runs (gpu: MLX with CUDA or "
                    "Metal), and the peers with it")
    ap.add_argument("--peers", action="store_true", help="also run the JAX/PyTorch peers that are importable")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of how reptile_fn's meta-step runs: "
                    + ", ".join(VARIANTS) + " (default: all)")
    ap.add_argument("--algorithms", default="reptile,fomaml,maml",
                    help="reptile gets every variant; the others the serial reference and vmap+compile (W1) "
                         "or vmap+compile only (W2)")
    ap.add_argument("--fuse", type=int, default=10, help="meta-iterations per call in the fused variant")
    ap.add_argument("--sizes", type=str, default=None,
                    help="meta-batch sizes per workload, e.g. 'W1:8,64;W2:5,32' (default: W1:8;W2:5;W3:2;W4:100; "
                         "W4's size is the number of episodes)")
    ap.add_argument("--scaling", action="store_true", help="meta-batch scaling table of the vmap+compile step")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks per figure (the median is reported)")
    ap.add_argument("--min-block", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and shorter blocks (smoke test)")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    ap.add_argument("--report", action="store_true",
                    help="then regenerate the performance section of research/results.md from research/perf/*.json")
    args = ap.parse_args(argv)
    for option, value, known in (("--variants", args.variants, VARIANTS), ("--algorithms", args.algorithms, ALGORITHMS)):
        unknown = [v for v in value.split(",") if v not in known]
        if unknown or not value:
            raise SystemExit(f"{option} {value!r}: {', '.join(map(repr, unknown)) or 'nothing'} is not one of them; "
                             f"use a comma list of {', '.join(known)}")
    unknown = [w for w in args.workloads.split(",") if w not in WORKLOADS]  # before any workload is timed
    if unknown or not args.workloads:
        raise SystemExit(f"--workloads {args.workloads!r}: {', '.join(map(repr, unknown)) or 'nothing'} is not one of "
                         f"them; use a comma list of {', '.join(WORKLOADS)}")
    for option, value in (("--fuse", args.fuse), ("--repeats", args.repeats), ("--min-block", args.min_block)):
        if not value > 0:
            raise SystemExit(f"{option} {value}: it must be > 0; give a positive number")
    if args.fuse > 1000:  # one compiled call unrolls all of them: the graph (and the compile) grows with it
        raise SystemExit(f"--fuse {args.fuse:,}: above 1,000, the most the fused variant unrolls into one compiled "
                         "call (its graph and compile time grow with it; 10 is the default); lower it")
    if args.quick:
        args.repeats, args.min_block = 2, 0.05

    if args.device == "gpu":
        if not mx.is_available(mx.gpu):
            raise SystemExit("--device gpu: MLX has no GPU here; install the cuda extra on an NVIDIA machine, or use "
                         "--device cpu")
        mx.set_default_device(mx.gpu)
    else:
        mx.set_default_device(mx.cpu)
    env = environment(args.device)
    print(f"reptile_fn {reptile_fn.__version__} · mlx {env['mlx']} · {env['device']} · blas: {env['blas']} · "
          f"{env['cpu_count']} cores {env['machine']}")

    rows, scaling = [], []
    variants = args.variants.split(",")
    custom = {}
    lifted = os.environ.get(NO_LIMITS, "") not in ("", "0")
    most = INT32_MAX if lifted else LIMITS["meta_batch_size"].most
    for part in filter(None, (args.sizes or "").split(";")):
        w, _, sizes = part.partition(":")
        if w.strip() not in WORKLOADS:
            raise SystemExit(f"--sizes {args.sizes!r}: unknown workload {w.strip()!r}; use W1, W2, W3 or W4, e.g. 'W1:8,64;W2:5'")
        if not all(v.strip().isdigit() and len(v.strip()) <= 10 and int(v) > 0 for v in sizes.split(",")):
            raise SystemExit(f"--sizes: {clipped(part, 40)!r} is not a comma list of whole meta-batch sizes >= 1; write them like "
                             "'W1:8,64;W2:5'")
        custom[w.strip()] = [int(v) for v in sizes.split(",")]
        if max(custom[w.strip()]) > most:
            raise SystemExit(f"--sizes {args.sizes!r}: {max(custom[w.strip()]):,} is above {most:,}, the most reptile_fn "
                             "allows (a meta-batch's tasks, or W4's episodes, are adapted at once, so memory grows with "
                             f"them; papers use 4-32); lower it" + ("" if lifted else f" (or set {NO_LIMITS}=1)"))
    if args.json is not None:  # checked before minutes of measuring, not after
        io.check_json_out(args.json)
    for name in args.workloads.split(","):
        if name == "W3" and (missing := text_missing()):
            print(f"  (skipping W3: {missing})", file=sys.stderr)
            continue
        sizes = custom.get(name, [WORKLOADS[name]["meta_batch_size"]])
        for m in sizes:
            for algorithm in args.algorithms.split(",") if name in ("W1", "W2") else ["reptile"]:
                keep = {"W1": ("serial", "vmap+compile")}.get(name, ("vmap+compile",))
                for v in workload_variants(name, variants if algorithm == "reptile" else [v for v in variants if v in keep]):
                    what = f"E={m} reptile_fn" if name == "W4" else f"M={m} reptile_fn {algorithm}"
                    print(f"  {name} {what} {v} ...", file=sys.stderr, flush=True)
                    rows.append(run_variant(name, v, m, repeats=args.repeats, min_block_s=args.min_block,
                                            fuse_n=args.fuse, algorithm=algorithm))
            if args.peers:
                rows += run_peers(name, m, args.device, repeats=args.repeats, min_block_s=args.min_block)
        if args.scaling:
            for m in WORKLOADS[name]["scaling"]:
                print(f"  {name} scaling M={m} ...", file=sys.stderr, flush=True)
                r = run_variant(name, "vmap+compile", m, repeats=args.repeats, min_block_s=args.min_block)
                r["ms_per_task"] = 1000.0 / (r["meta_steps_per_s"] * m)
                scaling.append(r)

    best_peer: dict = {}
    for r in rows:
        if r["framework"] != "reptile_fn":
            key = (r["workload"], r["meta_batch_size"])
            best_peer[key] = max(best_peer.get(key, 0.0), r["meta_steps_per_s"])
    print()
    print(table(rows, best_peer))
    if scaling:
        print("\nmeta-batch scaling (reptile_fn vmap+compile): cost per task should stay flat or fall")
        print(f"{'workload':<9}{'M':>4}{'meta-steps/s':>14}{'ms per task':>13}{'ms per step':>13}")
        for r in scaling:
            print(f"{r['workload']:<9}{r['meta_batch_size']:>4}{r['meta_steps_per_s']:>14.1f}{r['ms_per_task']:>13.3f}"
                  f"{1000.0 / r['meta_steps_per_s']:>13.3f}")
    if args.json:
        used = sys.argv[1:] if argv is None else list(argv)  # the options, however the script was started
        out = {"environment": env, "argv": ["benchmarks/throughput.py", *used], "results": rows, "scaling": scaling,
               "best_peer": [{"workload": w, "meta_batch_size": m, "meta_steps_per_s": v} for (w, m), v in best_peer.items()]}
        io.write_json(args.json, out, indent=2)
        print(f"\nwrote {args.json}")
    if args.report:
        from benchmarks import report

        report.write()
        print(f"updated {report.RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
