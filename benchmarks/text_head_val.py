"""Choose the prototype head's temperature and the adaptation rates on CLINC150's validation domains.

    uv run python benchmarks/text_head_val.py --data-dir DIR [--episodes 100] [--json research/text_head_val.json]

A fresh rank-4 LoRA adapter on all-MiniLM-L6-v2 (configs/clinc_5w5s_lora.yaml) adapts to 5-way 1- and 5-shot
episodes of CLINC150's validation intents (class-disjoint from the training and test domains) for 5 inner Adam
steps, two ways:

- **prototype head** (``peft.head: prototypes``): the head starts as the support set's prototype classifier
  (``heads.prototype_head``) at temperature ``head_scale``; adapter and head adapt on cross-entropy;
- **SetFit-style** (Tunstall et al. 2022): the adapter alone adapts on the support set's sentence pairs
  (``heads.pair_loss``: cosine similarity regressed onto same-class), and the query is scored by the prototype
  head rebuilt from the adapted embeddings before every scoring.

Every setting sees the same episodes; the reported figure is query accuracy (%) after 0, 1 and 5 steps and the
difference from the frozen prototypes (0 steps) episode by episode. The setting chosen per method is the one with
the best mean accuracy over both shot counts after 5 steps; test domains and Banking77 are never looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import reptile_fn  # before mlx.core: importing it loads OpenBLAS on Linux
from reptile_fn import config as C
from reptile_fn import heads, peft
from reptile_fn import run as R
from reptile_fn import tree as T
from reptile_fn.evaluate import mean_ci, per_episode_curves
from reptile_fn.text.batching import EVAL_CHUNK, by_length

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCALES = (1.0, 3.0, 10.0)
PROTO_LRS = (0.01, 0.001)
SETFIT_LRS = (0.01, 0.001)
RECORD = [0, 1, 5]


def settings():
    for s in SCALES:
        for lr in PROTO_LRS:
            yield f"prototypes s={s:g} lr={lr:g}", ("prototypes", s, lr)
    for lr in SETFIT_LRS:
        yield f"setfit lr={lr:g}", ("setfit", None, lr)


def loop_for(run, method: str, scale, lr):
    """The inner loop (and per_episode_curves options) of one setting."""
    loop = R.evaluation_loop(run, steps=RECORD[-1])._replace(lr=lr)
    apply = run.model.apply
    if method == "prototypes":
        return loop._replace(head_init=heads.prototype_head(apply, "base.head", scale)), {}
    options = {"objective": (heads.features(apply, "base.head"), heads.pair_loss),
               "rehead": heads.prototype_head(apply, "base.head")}
    return loop._replace(trainable=T.match(peft.ADAPTER_TRAINABLE)), options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--json", type=Path, default=ROOT / "research" / "text_head_val.json")
    args = p.parse_args()
    out = {"what": __doc__.split("\n\n")[1].strip(), "episodes": args.episodes, "steps": RECORD,
           "machine": reptile_fn.blas_status(), "command": "uv run python benchmarks/text_head_val.py " + " ".join(sys.argv[1:]),
           "cells": {}}
    for k in (1, 5):
        overrides = [f"tasks.k_shot={k}", "tasks.test_split=val", "tasks.query_size=5"]
        if args.data_dir:
            overrides.append(f"tasks.data_dir={args.data_dir}")
        run = R.build(C.load("clinc_5w5s_lora", overrides))
        keys = R.run_keys(run.cfg.seed)
        params = run.initial_params(keys.init)
        sample_key, adapt_key = mx.random.split(keys.eval_final)
        episodes = run.tasks.sample_test(sample_key, args.episodes)
        cell = out["cells"][f"{k}-shot"] = {}
        protos = None
        for name, (method, scale, lr) in settings():
            loop, options = loop_for(run, method, scale, lr)
            t0 = time.perf_counter()
            acc = 100 * per_episode_curves(loop, run.model.apply, run.loss, params, episodes, metric=run.metric,
                                           key=adapt_key, record=RECORD, split=partial(by_length, chunk=EVAL_CHUNK),
                                           **options)["metric"]
            protos = acc[:, 0] if protos is None else protos  # 0 steps: the prototype classifier, whatever the setting
            m, ci = mean_ci(acc)
            d, dci = mean_ci(acc[:, -1] - protos)
            cell[name] = {"accuracy": m.round(2).tolist(), "ci95": ci.round(2).tolist(),
                          "vs_prototypes": [round(float(d), 2), round(float(dci), 2)],
                          "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{k}-shot {name}: {cell[name]['accuracy']} vs prototypes {d:+.2f} ± {dci:.2f}", flush=True)
    chosen = {}
    for method in ("prototypes", "setfit"):
        names = [n for n in out["cells"]["1-shot"] if n.startswith(method)]
        chosen[method] = max(names, key=lambda n: np.mean([out["cells"][c][n]["accuracy"][-1] for c in out["cells"]]))
    out["chosen"] = chosen
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print("chosen:", chosen)


if __name__ == "__main__":
    main()
