"""Score a shipped meta-learned Omniglot initialization on held-out characters.

The package ships Reptile initializations of the conv4 network for 5-way 1-shot and 5-shot
(``reptile_fn/pretrained``; research/results.md says how they were trained). Load one by name,
adapt it on each episode's support set and score the query set (transductive batch norm, as the
papers' main tables):

    uv run python examples/omniglot_pretrained.py --data-dir DIR    # DIR/omniglot/images_background.zip
    uv run python examples/omniglot_pretrained.py --data-dir DIR --name omniglot-5w5s --episodes 200

``reptile-fn download omniglot --data-dir DIR`` fetches the official zips.
"""

import argparse

import reptile_fn  # noqa: F401  (first: on Linux it loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx

from reptile_fn import pretrained
from reptile_fn import train as TR


def main(name: str, data_dir: str | None, episodes: int, steps: int) -> dict:
    overrides = [f"tasks.data_dir={data_dir}"] if data_dir else []
    s, params, state, iteration = TR.load_run(pretrained.resolve(name), overrides)
    t = s.cfg.tasks
    print(f"{name}: {s.cfg.algorithm} init after {iteration} meta-iterations, {t.n_way}-way {t.k_shot}-shot, "
          f"test split {t.test_split!r}")
    curve = TR.evaluate_init(s, params, mx.random.key(0), episodes, steps, inner_lr=s.meta.inner_lr(state),
                             inner_opt=s.meta.inner_opt(state), record=[0, 1, steps])
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
