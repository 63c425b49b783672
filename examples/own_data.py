"""Your own images, end to end: meta-train on a folder of class subfolders, score the run on classes it never
saw, then adapt it to three labelled examples per class and label new images.

    uv run python examples/own_data.py [--work DIR] [--iterations N]

It writes a small synthetic image set first (colour blobs with a class-specific stripe, mixed sizes, PNG and
JPEG), so it runs anywhere; point `tasks.path` at your own folder to do the same with real data.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from reptile_fn import config as C
from reptile_fn import run as R
from reptile_fn.run.adapt import adapt_to, save_predictions

import numpy as np

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "images_5w1s.yaml"


def write_images(root: Path, classes: range, per: int, seed: int) -> Path:
    """``root/class_NN/img_I.(png|jpg)``: class c is a seeded colour with a stripe of period c + 2."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
        base = np.random.default_rng(100 + c).integers(0, 255, size=3)
        for i in range(per):
            w, h = (int(v) for v in rng.integers(20, 90, size=2))
            pixels = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
            pixels[:, np.arange(w) % (c + 2) == 0] = 255 - base
            Image.fromarray(pixels).save(root / f"class_{c:02d}" / f"img_{i}.{'png' if i % 2 else 'jpg'}")
    return root


def main(work: str | None = None, iterations: int = 200, episodes: int = 100) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work or tmp)
        data = write_images(root / "images", range(20), 10, 0)
        cfg = C.load(CONFIG, [f"tasks.path={data}", f"meta_iterations={iterations}", "tasks.n_way=3",
                              f"eval.episodes={episodes}", "eval.inner_steps=10", "eval.every=100000", "checkpoint_every=100"])
        summary = R.train(cfg, root / "run", progress=False, log=lambda *_: None)
        held_out = summary["eval"]["inits"]
        print(R.format_results(summary["eval"]))

        # the run on classes of a folder it never trained on (every class held out), as `eval --data`
        other = write_images(root / "other", range(40, 46), 8, 1)
        checkpoint = root / "run" / R.CHECKPOINT
        run, params, state, _ = R.load(checkpoint, data=other)
        unseen = R.final_evaluation(run, params, state, episodes=episodes, baselines=("random",))
        print("on a folder it never saw:\n" + R.format_results(unseen))

        # three labelled images per class, then label new ones
        support = write_images(root / "support", range(60, 63), 3, 2)
        query = write_images(root / "query", range(60, 63), 5, 3)
        pred, run, state = adapt_to(checkpoint, support, query)
        written = save_predictions(pred, run, state, root / "predictions", source=str(checkpoint))
        print(f"adapted to {len(pred.classes)} new classes from 3 examples each: {100 * pred.accuracy:.1f}% of "
              f"{len(pred.items)} new images right; wrote {', '.join(p.name for p in written)}")
        return {"held_out": held_out["meta"]["metric"]["mean"][-1], "random": held_out["random"]["metric"]["mean"][-1],
                "unseen": unseen["inits"]["meta"]["metric"]["mean"][-1], "adapted": pred.accuracy}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="keep the data and run here (default: a temporary folder)")
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()
    main(args.work, args.iterations)
