"""Score a shipped meta-learned Omniglot initialization on held-out characters.

The package ships Reptile initializations of the conv4 network for 5-way and 20-way, 1-shot and 5-shot
(omniglot-5w1s, omniglot-5w5s, omniglot-20w1s, omniglot-20w5s in ``reptile_fn/pretrained``; research/results.md
says how they were trained, ``reptile-fn info --checkpoint NAME`` prints a card). Load one by name,
adapt it on each episode's support set and score the query set (transductive batch norm, as the
papers' main tables):

    uv run python examples/omniglot_pretrained.py --data-dir DIR    # DIR/omniglot/images_*.zip
    uv run python examples/omniglot_pretrained.py --data-dir DIR --name omniglot-5w5s --episodes 200

``reptile-fn download omniglot --data-dir DIR`` fetches the official zips.
"""

import argparse

from reptile_fn import pretrained
from reptile_fn import run as R

import mlx.core as mx


def main(name: str, data_dir: str | None, episodes: int, steps: int) -> dict:
    overrides = [f"tasks.data_dir={data_dir}"] if data_dir else []
    run, params, state, iteration = R.load(name, overrides)  # a shipped name or a checkpoint path
    t = run.cfg.tasks
    print(f"{name}: {run.cfg.algorithm} init after {iteration} meta-iterations, {t.n_way}-way {t.k_shot}-shot, "
          f"test split {t.test_split!r}")
    # with its algorithm state: the init adapts as it was meta-learned to (e.g. a kept inner Adam state)
    curve = R.evaluate_init(run, params, mx.random.key(0), episodes, steps, state=state, record=[0, 1, steps])
    for step, m, ci in zip(curve["steps"], curve["metric"]["mean"], curve["metric"]["ci95"]):
        print(f"  after {step:>2} steps: {100 * m:.2f} ± {100 * ci:.2f}% over {episodes} episodes")
    return curve


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="omniglot-5w1s", choices=pretrained.names())
    p.add_argument("--data-dir", default=None, help="folder with omniglot/ (else $REPTILE_FN_DATA)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    main(args.name, args.data_dir, args.episodes, args.steps)
