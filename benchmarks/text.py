"""Few-shot intent classification with a pretrained encoder: frozen baselines vs meta-learned LoRA.

    uv run reptile-fn train --config configs/clinc_5w5s_lora.yaml --data-dir DIR --out runs/clinc-reptile
    uv run reptile-fn train --config configs/clinc_5w5s_lora.yaml --data-dir DIR --set algorithm=fomaml \\
        --set outer_lr=null --set outer_lr_final=null --set outer_optimizer=null --out runs/clinc-fomaml
    uv run python benchmarks/text.py --data-dir DIR --run reptile=runs/clinc-reptile --run fomaml=runs/clinc-fomaml \\
        [--encoder-episodes N] [--resume]   # rows (c)-(f) on the first N episodes only; --resume: go on from
                                            # where a stopped run left research/text.json (blocks of --block)
    uv run python benchmarks/text.py --data-dir DIR --only fomaml --run fomaml=runs/clinc-fomaml \\
        --json runs/text-fomaml.json [--encoder-episodes N]       # one more row, measured on its own, then
    uv run python benchmarks/text.py --report-only --add runs/text-fomaml.json   # merged into the table
    uv run python benchmarks/text.py --data-dir DIR --frozen-only   # rows (a), (b) only: minutes on a CPU
    uv run python benchmarks/text.py --data-dir DIR --quick         # smoke run: 10 sentences per intent, prints only
    uv run python benchmarks/text.py --report-only                  # re-render results.md from research/text.json
    uv run python benchmarks/text.py --profile        # encoder forward / LoRA gradient, GELU via mx.erf vs ours
    uv run python benchmarks/text.py --data-dir DIR --packing   # row (c): sentences padded vs packed into rows

Meta-train on CLINC150's training intents (split by domain, seed 0), test on held-out intents:
CLINC150's test domains, and Banking77 (another domain entirely). 5-way 1-shot and 5-shot, query 5
per class, the same ``--episodes`` held-out episodes for every row (``run.evaluate_init``'s
sampling with the run's final-evaluation key), accuracy after 0..K inner steps (``--steps``, default 5 as
in meta-training), mean ± 95% CI:

  (a) frozen encoder + cosine prototypes (class means of support embeddings; no training)
  (b) frozen encoder + linear head, zero-initialised, trained by the inner loop (SGD; its learning
      rate chosen on CLINC150's validation domains)
  (c) a fresh LoRA adapter + head on the encoder, adapted like the runs (the runs' ``lora0`` baseline)
  (d) Reptile-meta-learned LoRA + head init (``--run reptile=DIR``: the run chosen on validation domains)
  (d') the same with ``peft.head: zero`` (``--run reptile-zero=DIR``; optional)
  (d'') another Reptile run, not chosen (``--run reptile-untuned=DIR``; optional)
  (e) FOMAML-meta-learned LoRA + head init (``--run fomaml=DIR``)
  (f) full fine-tuning of encoder + head (the runs' ``base-full`` baseline)
  (c+), (d+), (e+), (f+): the same with the head rebuilt from every support set as its prototype classifier
      (``peft.head: prototypes``; (d+), (e+): runs meta-trained that way, ``--run reptile-proto=DIR``)
  (e++) (e+) meta-trained on harder tasks (10-way 2-shot; ``--run fomaml-proto-10w=DIR``), scored on the same
      5-way episodes as every row (a run whose head is rebuilt per task evaluates at any n_way)
  (e+d) (e+) meta-trained on tasks whose 5 intents come from one domain (``tasks.train_within_group``;
      ``--run fomaml-proto-domain=DIR``)
  (g) SetFit-style (Tunstall et al. 2022): the fresh adapter adapts on the support set's sentence pairs
      (cosine similarity regressed onto same-class), then the prototype head of the adapted embeddings

(a) and (b) run on cached embeddings (every sentence embedded once, ``text.frozen.embed_classes``);
(c)-(f) run the encoder in every inner step. Also reported: trainable parameters and seconds per
adaptation (K steps of one episode) and support examples adapted per second on this machine. Writes
research/text.json and the "Text" section of research/results.md, after every block of every row of
(c)-(f) too. Rows (c)-(f) keep each episode's count of correct query sentences, so a stopped run is
continued with ``--resume`` (same command) and every row is paired with the prototypes episode by episode.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import reptile_fn  # before mlx.core: importing it loads OpenBLAS on Linux
from reptile_fn import heads, peft
from reptile_fn import run as R
from reptile_fn import tree as T
from reptile_fn.evaluate import mean_ci, per_episode_curves
from reptile_fn.tasks.text import make_text_tasks, sample_episodes
from reptile_fn.text.batching import EVAL_CHUNK, by_length
from reptile_fn.text.encoder import load_encoder
from reptile_fn.text.frozen import embed_classes, head_curves, prototype_accuracy

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map_with_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: makes the sibling `benchmarks.report` importable

from benchmarks.report import write_json, write_section  # noqa: E402

JSON = ROOT / "research" / "text.json"
RESULTS = ROOT / "research" / "results.md"
BEGIN, END = "<!-- TEXT:BEGIN (generated by benchmarks/text.py) -->", "<!-- TEXT:END -->"
TARGETS = {"CLINC150 held-out domains": "test", "Banking77": "banking77"}
SHOTS = (1, 5)
N_WAY, QUERY = 5, 5
HEAD_LRS = (1.0, 3.0, 10.0, 30.0)  # frozen head: chosen on CLINC150's validation domains
VAL_EPISODES = 200
RUN_ROWS = ("reptile", "reptile-zero", "reptile-untuned", "fomaml", "reptile-proto", "fomaml-proto",
            "fomaml-proto-10w", "fomaml-proto-domain")  # --run NAME=DIR
BASELINE_ROWS = ("lora0", "lora0-proto", "setfit", "full", "full-proto")  # from the first run's pretrained base
ROWS = {"prototypes": "(a) frozen + prototypes", "prototypes-subset": "(a) on the (c)-(f) episodes",
        "head": "(b) frozen + linear head", "lora0": "(c) fresh LoRA + head",
        "lora0-proto": "(c+) fresh LoRA, prototype head",
        "reptile": "(d) Reptile LoRA + head", "reptile-zero": "(d') Reptile LoRA, zero head",
        "reptile-untuned": "(d'') Reptile LoRA + head, not chosen",
        "reptile-proto": "(d+) Reptile LoRA, prototype head",
        "fomaml": "(e) FOMAML LoRA + head", "fomaml-proto": "(e+) FOMAML LoRA, prototype head",
        "fomaml-proto-10w": "(e++) FOMAML LoRA, prototype head, 10-way training tasks",
        "fomaml-proto-domain": "(e+d) FOMAML LoRA, prototype head, within-domain training tasks",
        "full": "(f) full fine-tuning", "full-proto": "(f+) full fine-tuning, prototype head",
        "setfit": "(g) SetFit-style LoRA, prototype head"}
HEAD_VAL = ROOT / "research" / "text_head_val.json"  # benchmarks/text_head_val.py: the prototype rows' settings


def capped(tasks, per_class: int | None):
    """``tasks`` with at most ``per_class`` sentences per intent (the --quick smoke run)."""
    if per_class is None:
        return tasks
    return dataclasses.replace(tasks, test_x=tasks.test_x[:, :per_class],
                               test_counts=mx.minimum(tasks.test_counts, per_class),
                               train_x=tasks.train_x[:, :per_class], train_counts=mx.minimum(tasks.train_counts, per_class))


def curve_summary(acc: np.ndarray, seconds: float, params: int) -> dict:
    m, ci = mean_ci(100 * acc)
    return {"accuracy": m.tolist(), "ci95": ci.tolist(), "seconds_per_adaptation": seconds, "trainable": params}


def frozen_rows(args, encoder, config, tokenizer, steps: int) -> dict:
    """(a) and (b) for every target and shot count, on cached embeddings."""
    out, protos, eval_key = {}, {}, R.run_keys(0).eval_final  # the runs' seed-0 final-evaluation key: the same episodes
    sample_key = mx.random.split(eval_key)[0]
    val = capped(make_text_tasks(args.data_dir, n_way=N_WAY, k_shot=5, query_size=QUERY, test_split="clinc150:val",
                                 tokenizer=tokenizer), args.per_class)
    val_x = embed_classes(encoder, config, val.test_x, val.test_counts)
    lr_val = {}
    for lr in HEAD_LRS:  # the head's step size, on validation intents only
        ep = sample_episodes(val_x, val.test_counts, mx.random.key(77), args.val_episodes, n_way=N_WAY, k_shot=5,
                             query_size=QUERY)
        lr_val[lr] = float(head_curves(ep, N_WAY, lr=lr, steps=steps, record=[steps])["metric"][:, -1].mean())
    head_lr = max(lr_val, key=lr_val.get)
    print(f"frozen head lr {head_lr} (validation accuracy {lr_val})", flush=True)
    for target, split in TARGETS.items():
        tasks = capped(make_text_tasks(args.data_dir, n_way=N_WAY, k_shot=1, query_size=QUERY,
                                       test_split="banking77" if split == "banking77" else f"clinc150:{split}",
                                       tokenizer=tokenizer), args.per_class)
        t0 = time.perf_counter()
        x = embed_classes(encoder, config, tasks.test_x, tasks.test_counts)
        n_sentences = int(np.array(tasks.test_counts).sum())
        print(f"{target}: {n_sentences} sentences embedded in {time.perf_counter() - t0:.1f} s", flush=True)
        for k in SHOTS:
            ep = sample_episodes(x, tasks.test_counts, sample_key, args.episodes, n_way=N_WAY, k_shot=k, query_size=QUERY)
            t0 = time.perf_counter()
            proto = prototype_accuracy(ep, N_WAY)
            t_proto = (time.perf_counter() - t0) / args.episodes
            t0 = time.perf_counter()
            head = head_curves(ep, N_WAY, lr=head_lr, steps=steps)["metric"]
            t_head = (time.perf_counter() - t0) / args.episodes
            cell = out.setdefault(f"{target}|{k}", {})
            cell["prototypes"] = curve_summary(np.repeat(proto[:, None], steps + 1, axis=1), t_proto, 0)
            cell["head"] = curve_summary(head, t_head, config.hidden_size * N_WAY + N_WAY)
            for row in ("prototypes", "head"):
                cell[row]["episodes"] = args.episodes
            cell["prototypes"]["correct"] = np.rint(proto * N_WAY * QUERY).astype(int).tolist()  # for the subset row
            protos[f"{target}|{k}"] = proto
            print(f"  {k}-shot: prototypes {100 * proto.mean():.2f}%, head {100 * head[:, -1].mean():.2f}% after "
                  f"{steps} steps", flush=True)
    return out, {"head_lr": head_lr, "head_lr_validation": lr_val}, protos


def encoder_inits(args, name: str, run_dir: str, first: bool, target: str, split: str, k: int):
    """The rows one run gives in one cell: {row: (run, params, inner loop, iteration)}.

    The meta-learned row adapts with the run's evaluation loop (``run.evaluation_loop`` with its algorithm
    state: a kept inner Adam state is the start). (c) and (f) start from the first run's pretrained base
    (``run.baseline_inits``): (c) a fresh adapter adapted exactly like the runs; (f) every encoder weight and
    the head, with Adam at ``--full-lr`` for the encoder and the runs' inner rate for the head.
    """
    overrides = [f"tasks.n_way={N_WAY}", f"tasks.k_shot={k}", f"tasks.test_split={split}", f"tasks.query_size={QUERY}"]
    if args.data_dir:
        overrides.append(f"tasks.data_dir={args.data_dir}")
    run, params, state, iteration = R.load(Path(run_dir) / R.CHECKPOINT, overrides)
    run = dataclasses.replace(run, tasks=capped(run.tasks, args.per_class))
    rows = {name: (run, params, R.evaluation_loop(run, state), iteration, {})}
    if first and args.baselines:  # the baselines once per cell, from the first run's base
        rows.update(baseline_rows(args, run))
    return {row: v for row, v in rows.items() if not args.only or row in args.only}


def baseline_rows(args, run) -> dict:
    """(c), (f) and their prototype-head variants (c+), (f+), and (g) SetFit-style, from ``run``'s pretrained base.

    (c+)/(f+): the head starts every episode as the support set's prototype classifier (``heads.prototype_head``,
    temperature and adapter rate chosen on validation domains: ``benchmarks/text_head_val.py``). (g): the adapter
    alone adapts on the support set's sentence pairs (``heads.pair_loss``) and the query is scored by the prototype
    head of the adapted embeddings; at 0 steps it is (a).
    """
    b = R.baseline_inits(run, ("lora0", "base-full"))
    fast, _ = T.partition(b["base-full"].params, b["base-full"].trainable)
    full_lr = tree_map_with_path(lambda path, a: run.cfg.inner_lr if path.startswith("base.head") else args.full_lr,
                                 fast, is_leaf=lambda a: isinstance(a, mx.array))
    lora0 = R.evaluation_loop(run, trainable=b["lora0"].trainable)._replace(head_init=None)
    full = R.evaluation_loop(run, trainable=b["base-full"].trainable)._replace(lr=full_lr, head_init=None)
    apply, at = run.model.apply, "base.head"
    proto = heads.prototype_head(apply, at, args.head_scale)
    setfit = lora0._replace(lr=args.setfit_lr, trainable=T.match(peft.ADAPTER_TRAINABLE))
    return {"lora0": (run, b["lora0"].params, lora0, None, {}),
            "lora0-proto": (run, b["lora0"].params, lora0._replace(head_init=proto, lr=args.proto_lr), None, {}),
            "setfit": (run, b["lora0"].params, setfit, None, {"objective": (heads.features(apply, at), heads.pair_loss),
                                                             "rehead": heads.prototype_head(apply, at)}),
            "full": (run, b["base-full"].params, full, None, {}),
            "full-proto": (run, b["base-full"].params, full._replace(head_init=proto), None, {})}


def encoder_rows(args, runs: dict, steps: int, protos: dict, resumed: dict, done=lambda cells: None) -> dict:
    """(c)-(f) on the first ``--encoder-episodes`` of the frozen rows' episodes, the encoder run in every step.

    Episodes go in blocks of ``--block``: every row of every cell gets its next block before any row
    gets the one after, so a run stopped at any time leaves all rows on about as many episodes, and
    ``done(cells)`` is called after every block of every row. Each row keeps the number of query
    sentences right in every episode (``correct``), so ``resumed`` (rows of an earlier, stopped
    run on the same episodes: ``--resume``) is continued where it stopped, not redone. ``protos``
    holds the prototype accuracy of every episode per cell: (d) and (e) are compared with it
    episode by episode.
    """
    out = {key: {row: dict(r) for row, r in rows.items() if "correct" in r} for key, rows in resumed.items()}
    m, n_query = args.encoder_episodes, N_WAY * QUERY
    record = shown_steps(steps)  # scoring the query set costs a third of a 5-shot step: only the table's steps
    cells = {}  # (target, k) -> (episodes, adapt key, {row: init}): built once, on first use
    timed = {}  # (cell, row) -> (episodes, seconds) adapted by this process: the timing reported (this code)
    for hi in [*range(args.block, m, args.block), m]:
        for target, split in TARGETS.items():
            for k in SHOTS:
                key = f"{target}|{k}"
                cell = out.setdefault(key, {})
                if (target, k) not in cells:
                    inits = {}
                    for i, (name, run_dir) in enumerate(runs.items()):
                        inits.update(encoder_inits(args, name, run_dir, i == 0, target, split, k))
                    first = next(iter(inits.values()))[0] if inits else None
                    sample_key, adapt_key = (mx.random.split(R.run_keys(first.cfg.seed).eval_final) if first
                                             else (None, None))
                    cells[target, k] = (first.tasks.sample_test(sample_key, args.episodes) if first else None,
                                        adapt_key, inits)
                episodes, adapt_key, inits = cells[target, k]
                for row, (run, p, loop, iteration, options) in inits.items():
                    have = cell.get(row, {}).get("correct", [])
                    if len(have) >= hi:
                        continue
                    part = type(episodes)(*(a[len(have):hi] for a in episodes))
                    chunk = args.chunk if not row.startswith("full") else max(1, args.chunk // 4)
                    t0 = time.perf_counter()
                    acc = per_episode_curves(loop._replace(steps=steps), run.model.apply, run.loss, p, part,
                                             metric=run.metric, key=adapt_key, record=record,
                                             transductive=run.cfg.eval.transductive,
                                             split=partial(by_length, chunk=chunk), **options)["metric"]
                    took = time.perf_counter() - t0
                    seconds = cell.get(row, {}).get("seconds_total", 0.0) + took
                    n_timed, s_timed = timed.get((key, row), (0, 0.0))
                    timed[key, row] = (n_timed + len(part.support_y), s_timed + took)
                    correct = have + np.rint(acc * n_query).astype(int).tolist()
                    n_adapt = T.param_count(T.partition(p, loop.trainable)[0])
                    cell[row] = encoder_row(correct, n_query, seconds, n_adapt, record, k, steps,
                                            protos[key][:len(correct)] if row in RUN_ROWS else None, timed[key, row])
                    if options or loop.head_init is not None:
                        cell[row]["head"] = "prototypes"
                    if iteration is not None:
                        cell[row]["meta_iterations"] = iteration
                    print(f"{target} {k}-shot {row}: {cell[row]['accuracy'][-1]:.2f}% after {steps} steps on "
                          f"{len(correct)} episodes ({cell[row]['seconds_per_adaptation']:.2f} s / adaptation)",
                          flush=True)
                    done(out)
    return out


def encoder_row(correct: list, n_query: int, seconds: float, n_adapt: int, record: list[int], k: int, steps: int,
                protos: np.ndarray | None, timed: tuple[int, float] | None = None) -> dict:
    """One encoder row's summary from its per-episode counts of correct query sentences.

    ``seconds`` is the time of all its episodes (``seconds_total``, over every resumed run); ``timed``
    (episodes, seconds) those of the latest run, which give the speed reported (the code as it is now).
    """
    acc = np.array(correct) / n_query
    m = len(correct)
    timed_m, timed_s = timed if timed is not None else (m, seconds)
    row = curve_summary(acc, timed_s / timed_m, n_adapt)
    row.update(episodes=m, steps=record, correct=correct, query=n_query, seconds_total=seconds,
               timed_episodes=timed_m, support_examples_per_s=N_WAY * k * steps / (timed_s / timed_m))
    if protos is not None:
        d, ci = mean_ci(100 * (acc[:, -1] - protos))
        row["vs_prototypes"] = {"difference": float(d), "ci95": float(ci), "episodes": m}
    return row


def add_rows(res: dict, other: dict, source) -> None:
    """Put the encoder rows (and runs, commands) of ``other`` into ``res``: both must sample the same episodes
    (each row says on how many of them it was measured)."""
    same = ("episodes", "steps")
    if any(res.get(k) != other.get(k) for k in same):
        sys.exit(f"--add {source}: measured with other --episodes / --steps than {JSON}")
    for key, rows in other["cells"].items():
        for name, row in rows.items():
            if name in (*BASELINE_ROWS, *RUN_ROWS):
                res["cells"].setdefault(key, {})[name] = row
    res["runs"] = {**res.get("runs", {}), **other.get("runs", {})}
    res.setdefault("commands", [res.pop("command")] if "command" in res else [])
    res["commands"] = res.get("commands", []) + [c for c in other.get("commands", []) if c not in res.get("commands", [])]
    res["run_info"] = {**res.get("run_info", {}), **other.get("run_info", {})}


def resumable(before: dict, runs: dict, episodes: int, steps: int, source) -> dict:
    """The encoder rows of ``before`` (an earlier results JSON) that ``--resume`` continues: it must have sampled
    the same episodes, and every run row the same run directory as ``runs`` gives now."""
    if (before.get("episodes"), before.get("steps")) != (episodes, steps):
        sys.exit(f"--resume: {source} was measured with --episodes {before.get('episodes')} --steps "
                 f"{before.get('steps')}; run with those, or without --resume to start again")
    for name, run in runs.items():
        if before.get("runs", {}).get(name, run) != run:
            sys.exit(f"--resume: row {name} in {source} was measured on {before['runs'][name]}, not {run}; give that "
                     f"run, or measure this one with --only {name} --json FILE and merge it with --report-only --add FILE")
    return before["cells"]


def with_subset(cell: dict, steps: int) -> dict:
    """``cell`` with the row "(a) on the (c)-(f) episodes": prototypes on the first episodes, as many as the
    encoder row with the fewest has (when that is fewer than all)."""
    proto = cell.get("prototypes", {})
    counts = [r["episodes"] for name, r in cell.items() if name in (*BASELINE_ROWS, *RUN_ROWS) and "episodes" in r]
    if "correct" not in proto or not counts or min(counts) >= len(proto["correct"]):
        return cell
    m = min(counts)
    acc = np.array(proto["correct"][:m]) / (N_WAY * QUERY)
    subset = curve_summary(np.repeat(acc[:, None], steps + 1, axis=1), proto["seconds_per_adaptation"], 0)
    subset["episodes"] = m
    return {**cell, "prototypes-subset": subset}


def vs_prototypes(cell: dict, name: str) -> dict | None:
    """Row ``name`` minus the prototypes after the last step, episode by episode: from both rows' per-episode
    counts where kept, else the row's stored comparison (meta-learned rows of older results)."""
    row, proto = cell.get(name, {}), cell.get("prototypes", {})
    if "correct" not in row or "correct" not in proto:
        return row.get("vs_prototypes")
    m = len(row["correct"])
    d, ci = mean_ci(100 * (np.array(row["correct"])[:, -1] - np.array(proto["correct"][:m])) / (N_WAY * QUERY))
    return {"difference": float(d), "ci95": float(ci), "episodes": m}


def vs_row(cell: dict, name: str, other: str) -> dict | None:
    """Row ``name`` minus row ``other`` after the last step, episode by episode on the first episodes both have."""
    row, base = cell.get(name, {}), cell.get(other, {})
    if "correct" not in row or "correct" not in base or row.get("steps") != base.get("steps"):
        return None
    m = min(len(row["correct"]), len(base["correct"]))
    d, ci = mean_ci(100 * (np.array(row["correct"][:m])[:, -1] - np.array(base["correct"][:m])[:, -1]) / (N_WAY * QUERY))
    return {"difference": float(d), "ci95": float(ci), "episodes": m}


def fresh_row(name: str) -> str:
    """The fresh-adapter row a meta-learned row is paired with: (c+) for prototype-head runs, else (c)."""
    return "lora0-proto" if "proto" in name else "lora0"


def vs_fresh(cell: dict, name: str) -> tuple[int, dict[int, tuple[float, float]]] | None:
    """Meta-learned row ``name`` minus its fresh adapter (``fresh_row``: the same head, adapted the same way), episode
    by episode on the first episodes both have: (their number, {inner steps: (mean difference in points, 95% CI)})
    at each recorded step (a linear head's 0 steps are chance, so from step 1; a prototype head's from step 0: the
    meta-learned adapter's embedding against the pretrained one's); None where either row lacks per-episode counts."""
    row, fresh = cell.get(name, {}), cell.get(fresh_row(name), {})
    if "correct" not in row or "correct" not in fresh or row.get("steps") != fresh.get("steps"):
        return None
    m = min(len(row["correct"]), len(fresh["correct"]))
    diff = 100 * (np.array(row["correct"][:m]) - np.array(fresh["correct"][:m])) / (N_WAY * QUERY)
    first = 0 if fresh_row(name) == "lora0-proto" else 1
    return m, {t: tuple(float(v) for v in mean_ci(diff[:, i])) for i, t in enumerate(row["steps"]) if t >= first}


def shown_steps(steps: int) -> list[int]:
    return sorted({0, 1, min(5, steps), steps})


def render(res: dict) -> str:
    steps = res["steps"]
    show = shown_steps(steps)
    lines = [BEGIN, "", f"5-way, query {QUERY} per class, accuracy (%) after the given inner steps, mean ± 95% CI over "
             "the episodes given per row: every row of a cell uses the same held-out episodes (rows (c)-(f) the first "
             "ones of them, where fewer). Encoder: all-MiniLM-L6-v2; frozen head: SGD at learning rate "
             f"{res['frozen']['head_lr']}, chosen on CLINC150's validation domains; (c)-(e) adapt like the runs' inner "
             "loop (Adam); (f) Adam at " + f"{res.get('full_lr', 'n/a')} for the encoder and the runs' rate for the head "
             "(not tuned). Seconds per adaptation: (c)-(f) timed over the episodes of each row's latest run "
             "(`timed_episodes` in the JSON; sentences packed into shared rows, `text.batching.by_length`), "
             f"(a)-(b) with cached embeddings. Machine: {res['machine']}. Commands: "
             + "; then ".join(f"`{c}`" for c in res.get("commands", [res.get("command")])) + ".", ""]
    info = res.get("run_info", {})
    if info:
        lines += ["Runs (configs/clinc_5w5s_lora.yaml): " + "; ".join(f"{ROWS[r]}: {info[r]}" for r in ROWS if r in info)
                  + ".", ""]
    for target in TARGETS:
        for k in SHOTS:
            cell = with_subset(res["cells"].get(f"{target}|{k}", {}), steps)
            lines += [f"**{target}, {k}-shot**", "",
                      "| method | trainable | episodes | " + " | ".join(f"{t} steps" for t in show)
                      + " | s / adaptation | support ex. / s |",
                      "|---|---:|---:|" + "---:|" * (len(show) + 2)]
            for key, label in ROWS.items():
                row = cell.get(key)
                if row is None and key == "prototypes-subset":
                    continue  # only shown while some encoder row is on fewer episodes than (a)
                if row is None:
                    lines.append(f"| {label} | | | " + " | ".join("not run" for _ in show) + " | | |")
                    continue
                at = [row.get("steps", list(range(steps + 1))).index(t) for t in show]
                vals = " | ".join(f"{row['accuracy'][i]:.2f} ± {row['ci95'][i]:.2f}" for i in at)
                rate = row.get("support_examples_per_s")
                lines.append(f"| {label} | {row['trainable']:,} | {row.get('episodes', res['episodes'])} | {vals} | "
                             f"{row['seconds_per_adaptation']:.4f} | {'' if rate is None else f'{rate:.0f}'} |")
            lines.append("")
    verdicts, fresh, setfit = [], [], []  # every encoder row vs the prototypes and vs (g); meta-learned rows vs (c)
    for target in TARGETS:
        for k in SHOTS:
            cell = res["cells"].get(f"{target}|{k}", {})
            for name in (n for n in ROWS if n in (*BASELINE_ROWS, *RUN_ROWS)):
                v = vs_prototypes(cell, name)
                if v:
                    verdicts.append(verdict(f"{target}, {k}-shot: {ROWS[name]}", "the prototype baseline", v, steps))
                v = vs_row(cell, name, "setfit") if name != "setfit" else None
                if v:
                    setfit.append(verdict(f"{target}, {k}-shot: {ROWS[name]}", "SetFit-style (g)", v, steps))
                f = vs_fresh(cell, name) if name in RUN_ROWS else None
                if f:
                    m, by_step = f
                    fresh.append(f"- {target}, {k}-shot: {ROWS[name]} minus {ROWS[fresh_row(name)].split()[0]}: " + ", ".join(
                        f"{d:+.2f} ± {ci:.2f} after {t} step{'s' * (t != 1)}" for t, (d, ci) in by_step.items())
                        + f" (paired over the same {m} episodes).")
    lines += ["**Does meta-learned LoRA beat prototypes?** "
              + ("Every encoder row against it, episode by episode:" if verdicts
                 else "Not measured yet: rows (c)-(f) need the meta-trained runs.")]
    lines += verdicts
    if setfit:
        lines += ["", "**Against SetFit-style fine-tuning (g)**, at equal steps, episode by episode:"] + setfit
    if fresh:
        lines += ["", "**Does meta-learning help over a fresh adapter?** Each meta-learned row minus the fresh adapter "
                  "with the same head ((c) or (c+)), episode by episode, in points:"] + fresh
    lines += ["", END]
    return "\n".join(lines)


def profile(episodes: int = 20, sentences: int = 25, length: int = 20, repeats: int = 3) -> dict:
    """Seconds for the encoder's two costs in a 5-shot LoRA step, GELU from ``mx.erf`` vs the library's.

    ``episodes`` episodes of ``sentences`` sentences of ``length`` random tokens (a chunk of 5-way
    5-shot CLINC150 support sets): the compiled, vmapped forward, and value-and-gradient with
    respect to a rank-4 LoRA adapter on every query/value weight (as the runs), medians of ``repeats``.
    """
    from reptile_fn import peft
    from reptile_fn.losses import cross_entropy
    from reptile_fn.text import encoder as EN

    encoder, config, _ = load_encoder(None)
    model = EN.text_classifier(encoder, config, N_WAY)
    base = model.init(mx.random.key(0))
    adapter = peft.lora_init(mx.random.key(1), base, targets=("encoder.layers.*.query.w", "encoder.layers.*.value.w"))
    apply = peft.lora_apply(model.apply)
    ids = mx.random.randint(1000, config.vocab_size, (episodes, sentences, length))
    x = mx.stack([ids, mx.ones_like(ids)], axis=-2).astype(mx.int32)
    y = mx.random.randint(0, N_WAY, (episodes, sentences))
    batched = tree_map_with_path(lambda _, a: mx.broadcast_to(a, (episodes, *a.shape)), adapter)

    def timed(f, *a) -> float:
        mx.eval(f(*a))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            mx.eval(f(*a))
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    library, out = EN.gelu, {"tokens": episodes * sentences * length, "machine": machine()}
    for name, gelu in (("mx.erf", lambda v: 0.5 * v * (1.0 + mx.erf(v * (2 ** -0.5)))), ("library", library)):
        EN.gelu = gelu
        try:
            fwd = mx.compile(mx.vmap(lambda a, xb: apply(base, a, xb)))
            grad = mx.compile(mx.vmap(mx.value_and_grad(lambda a, xb, yb: cross_entropy(apply(base, a, xb), yb))))
            out[name] = {"forward_s": timed(fwd, batched, x), "value_and_grad_s": timed(grad, batched, x, y)}
        finally:
            EN.gelu = library
        print(f"GELU via {name}: forward {out[name]['forward_s']:.2f} s, LoRA value_and_grad "
              f"{out[name]['value_and_grad_s']:.2f} s for {out['tokens']} tokens", flush=True)
    return out


def packing(data_dir, episodes: int = 8) -> dict:
    """Seconds per 5-step adaptation of a fresh rank-4 LoRA + head (row (c)), 5-shot, with each episode's
    sentences padded to its longest vs packed into shared rows (``text.batching.by_length(pack=...)``), on the
    same ``episodes`` held-out episodes of CLINC150 and Banking77; each way timed twice, alternating, after
    one episode of warm-up; and the largest difference of their query losses."""
    from reptile_fn import config as C

    out = {"episodes": episodes, "chunk": EVAL_CHUNK, "machine": machine()}
    for target, split in TARGETS.items():
        cfg = C.load(ROOT / "configs" / "clinc_5w5s_lora.yaml", [f"tasks.data_dir={data_dir}", f"tasks.test_split={split}"])
        run = R.build(cfg)
        init = R.baseline_inits(run, ("lora0",))["lora0"]
        key = R.run_keys(cfg.seed).eval_final
        batch = run.tasks.sample_test(key, episodes)
        loop = R.evaluation_loop(run, steps=5, trainable=init.trainable)._replace(lr=cfg.inner_lr)
        kw = dict(metric=run.metric, key=key, record=[0, 5], transductive=cfg.eval.transductive)

        def adapt_all(pack: bool, part=batch) -> dict:
            return per_episode_curves(loop, run.model.apply, run.loss, init.params, part,
                                      split=partial(by_length, pack=pack), **kw)

        row, curves = {"padded": [], "packed": []}, {}
        for pack in (False, True):
            adapt_all(pack, type(batch)(*(a[:1] for a in batch)))  # compile
        for _ in range(2):
            for pack in (False, True):
                t0 = time.perf_counter()
                curves[pack] = adapt_all(pack)
                row["packed" if pack else "padded"].append((time.perf_counter() - t0) / episodes)
        row = {k: float(np.median(v)) for k, v in row.items()}
        row.update(max_loss_difference=float(np.abs(curves[True]["loss"] - curves[False]["loss"]).max()),
                   same_accuracy=bool((curves[True]["metric"] == curves[False]["metric"]).all()),
                   accuracy_after_5=float(100 * curves[True]["metric"][:, -1].mean()))
        out[target] = row
        print(f"{target} 5-shot fresh LoRA: padded {row['padded']:.2f} s, packed {row['packed']:.2f} s per adaptation "
              f"({episodes} episodes); query losses differ by <= {row['max_loss_difference']:.1e}", flush=True)
    return out


def verdict(what: str, against: str, v: dict, steps: int) -> str:
    d, ci = v["difference"], v["ci95"]
    word = "beats" if d - ci > 0 else "loses to" if d + ci < 0 else "ties with"
    return (f"- {what} {word} {against}: {d:+.2f} ± {ci:.2f} points after {steps} steps (paired over the same "
            f"{v['episodes']} episodes).")


def head_settings() -> dict:
    """The prototype rows' temperature and rates chosen on validation domains (benchmarks/text_head_val.py)."""
    if not HEAD_VAL.is_file():
        return {"head_scale": 1.0, "proto_lr": None, "setfit_lr": 1e-3}
    chosen = json.loads(HEAD_VAL.read_text())["chosen"]
    proto = dict(part.split("=") for part in chosen["prototypes"].split()[1:])
    return {"head_scale": float(proto["s"]), "proto_lr": float(proto["lr"]),
            "setfit_lr": float(chosen["setfit"].split("=")[1])}


def machine() -> str:
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return f"{reptile_fn.blas_status()} ({threads} BLAS threads), mlx {mx.__version__}"


def text_card(name: str, run: Path, val: dict[int, dict], test: dict | None = None, row: str | None = None) -> dict:
    """The model card of a shipped text adapter: its training (the run's stored config), its validation scores
    (``val``: shots -> a ``reptile-fn eval`` results.json on the validation domains) and, where measured, its test
    cells (``test``: a benchmarks/text.py results JSON holding ``row``)."""
    c = R.stored_config(run)
    iteration = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]).get("iteration")
    scores = []
    for shots, r in sorted(val.items()):
        m = r["inits"]["meta"]
        for step in (0, m["steps"][-1]):
            i = m["steps"].index(step)
            scores.append({"split": f"CLINC150 validation domains, 5-way {shots}-shot", "episodes": m["episodes"],
                           "mode": f"after {step} inner steps", "accuracy": round(100 * m["metric"]["mean"][i], 2),
                           "ci95": round(100 * m["metric"]["ci95"][i], 2), "steps": step})
    for key, rows in (test or {}).get("cells", {}).items():
        r = rows.get(row or "")
        if r and "accuracy" in r and r["episodes"] == test.get("episodes"):  # a finished cell only
            target, shots = key.split("|")
            scores.append({"split": f"{target}, 5-way {shots}-shot", "episodes": r["episodes"], "mode": f"after {r['steps'][-1]} inner steps",
                           "accuracy": round(r["accuracy"][-1], 2), "ci95": round(r["ci95"][-1], 2),
                           "steps": r["steps"][-1]})
    head = f"prototype head at scale {c.peft.head_scale}" if c.peft.head == "prototypes" else f"{c.peft.head} head"
    return {
        "name": name,
        "task": "few-shot intent classification: rank-4 LoRA (query, value) on all-MiniLM-L6-v2, "
                f"{head}, 5-way",
        "protocol": "meta-trained on CLINC150's 6 training domains (split by domain, seed 0), hyperparameters chosen "
                    "on its 2 validation domains; scored on held-out domains (eval defaults to CLINC150's test "
                    "domains)",
        "training": {"algorithm": f"{c.algorithm}, inner {c.inner_optimizer} at {c.inner_lr} for {c.inner_steps} "
                                  f"steps, {c.tasks.k_shot}-shot training tasks", "meta_iterations": iteration,
                     "meta_batch_size": c.meta_batch_size,
                     "command": f"uv run reptile-fn train --config clinc_5w5s_proto --set algorithm={c.algorithm} "
                                "--set outer_lr=null --set outer_lr_final=null --set outer_optimizer=null "
                                f"--set peft.head_scale={c.peft.head_scale} --set inner_lr={c.inner_lr} --out "
                                f"research/runs/{run.name} (continued across sessions with --resume)"},
        "scores": scores,
        "evaluate": f"uv run reptile-fn eval --checkpoint {name} --data-dir DIR --set tasks.k_shot=1 --episodes 500 "
                    "--steps 5",
        "notes": "Needs the text extra (uv sync --extra text). The frozen encoder's prototypes score 93.40 on the same "
                 "100 validation episodes (1-shot). research/results.md, Text, has the table against the prototypes "
                 "and SetFit-style fine-tuning on CLINC150's test domains and Banking77."}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                   help="reptile=DIR, fomaml=DIR (and reptile-zero=DIR: a run with peft.head=zero)")
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--steps", type=int, default=5, help="inner steps K: accuracy after 0..K (the runs train with 5)")
    p.add_argument("--encoder-episodes", type=int, default=None,
                   help="rows (c)-(f) on the first N of the episodes (default: all; the encoder runs in every step)")
    p.add_argument("--full-lr", type=float, default=1e-4, help="(f): Adam learning rate of the encoder weights")
    p.add_argument("--chunk", type=int, default=EVAL_CHUNK, help="episodes adapted at once in (c)-(e) ((f): a quarter, "
                   ">= 1; text.batching.EVAL_CHUNK says why so few)")
    p.add_argument("--block", type=int, default=50, help="(c)-(f): every row gets this many more episodes before any "
                   "row gets more (results are written after each block)")
    p.add_argument("--resume", action="store_true", help="continue the encoder rows in --json where a stopped run "
                   "left them (same --episodes and --steps) instead of starting them again")
    p.add_argument("--val-episodes", type=int, default=VAL_EPISODES)
    chosen = head_settings()
    p.add_argument("--head-scale", type=float, default=chosen["head_scale"],
                   help="(c+), (f+): the prototype head's temperature (default: chosen in research/text_head_val.json)")
    p.add_argument("--proto-lr", type=float, default=chosen["proto_lr"],
                   help="(c+): the adapter's Adam rate (default: chosen in research/text_head_val.json)")
    p.add_argument("--setfit-lr", type=float, default=chosen["setfit_lr"],
                   help="(g): the adapter's Adam rate (default: chosen in research/text_head_val.json)")
    p.add_argument("--frozen-only", action="store_true")
    p.add_argument("--only", default="", help="comma list of encoder rows to run (reptile, fomaml, lora0, full, ...)")
    p.add_argument("--json", type=Path, default=JSON, help="where the results go (not research/text.json: results.md "
                   "is left alone; combine with --report-only --add)")
    p.add_argument("--add", type=Path, action="append", default=[],
                   help="with --report-only: merge the encoder rows of this results JSON (same episodes) first")
    p.add_argument("--quick", action="store_true", help="10 sentences per intent, 8 episodes, 1 step; prints only")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--profile", action="store_true", help="only time the encoder's forward and LoRA gradient with "
                   "GELU from mx.erf vs the library's, into research/text_profile.json")
    p.add_argument("--packing", action="store_true", help="only time row (c) with sentences padded vs packed "
                   "(5-shot, 8 episodes per dataset), into research/text_packing.json")
    args = p.parse_args()
    if args.profile:
        write_json(ROOT / "research" / "text_profile.json", profile(), indent=1)
        return
    if args.packing:
        write_json(ROOT / "research" / "text_packing.json", packing(args.data_dir), indent=1)
        return
    args.per_class = 10 if args.quick else None
    if args.quick:
        args.episodes, args.steps, args.val_episodes, args.encoder_episodes = 8, 1, 20, 4
    args.encoder_episodes = min(args.encoder_episodes or args.episodes, args.episodes)
    args.only = {r for r in args.only.split(",") if r}
    args.baselines = not args.only or bool(args.only & set(BASELINE_ROWS))
    if args.report_only:
        res = json.loads(JSON.read_text())
        for path in args.add:
            add_rows(res, json.loads(path.read_text()), path)
            command = f"uv run python benchmarks/text.py --report-only --add {path}"
            if command not in res["commands"]:  # re-rendering the same file adds nothing new
                res["commands"].append(command)
        if args.add:
            write_json(JSON, res, indent=1)
    else:
        runs = dict(item.split("=", 1) for item in args.run)
        unknown = set(runs) - set(RUN_ROWS)
        if unknown:
            sys.exit(f"--run names must be among {', '.join(RUN_ROWS)}, got {sorted(unknown)}")
        resumed = {}
        if args.resume and args.json.is_file():
            resumed = resumable(json.loads(args.json.read_text()), runs, args.episodes, args.steps, args.json)
        if args.proto_lr is None and runs:  # no validation choice yet: the runs' inner rate
            args.proto_lr = R.stored_config(next(iter(runs.values()))).inner_lr
        encoder, config, tokenizer = load_encoder(None)
        cells, frozen, protos = frozen_rows(args, encoder, config, tokenizer, args.steps)
        all_runs, commands = runs, []
        info = {}
        for name, run_dir in all_runs.items():
            c = R.stored_config(run_dir)
            info[name] = (f"{c.meta_iterations} meta-iterations of {c.algorithm}, meta-batch {c.meta_batch_size}, "
                          f"inner {c.inner_optimizer} at {c.inner_lr} for {c.inner_steps} steps, outer lr "
                          f"{'the algorithm default' if c.outer_lr is None else c.outer_lr}"
                          + ("" if c.outer_lr_final is None else f" annealed to {c.outer_lr_final}"))
        res = {"cells": cells, "frozen": frozen, "episodes": args.episodes, "steps": args.steps,
               "run_info": info,
               "runs": all_runs, "full_lr": args.full_lr,
               "encoder_episodes": args.encoder_episodes, "machine": machine(),
               "commands": commands + ["uv run python benchmarks/text.py "
                                       + " ".join(sys.argv[1:]).replace(str(args.data_dir), "DIR")]}

        def done(encoder_cells: dict) -> None:  # frozen rows + the encoder rows measured so far
            for key, rows in encoder_cells.items():
                cells.setdefault(key, {}).update(rows)
            if not args.quick:
                write_json(args.json, res, indent=1)
                if args.json.resolve() == JSON.resolve():
                    write_section(RESULTS, BEGIN, END, "## Text: few-shot intent classification", render(res))

        done({})
        if runs and not args.frozen_only:
            done(encoder_rows(args, runs, args.steps, protos, resumed, done))
        if args.quick or args.json.resolve() != JSON.resolve():
            print(render(res))
            return
    write_section(RESULTS, BEGIN, END, "## Text: few-shot intent classification", render(res))
    print(render(res))


if __name__ == "__main__":
    main()
