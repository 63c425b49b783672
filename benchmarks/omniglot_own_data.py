"""A shipped Omniglot init on Omniglot characters given as a user's image folder (`eval --data`): how the images are
read decides the score.

    uv run python benchmarks/omniglot_own_data.py --data-dir DIR [--characters 20] [--episodes 200] [--json F]

Copies ``--characters`` of the standard protocol's held-out test characters (seeded choice) out of the zips as the
PNGs they are (black ink on white, 105×105), into a class-per-folder set, and scores ``--checkpoint`` (default
omniglot-5w1s) on it with `eval --data`'s reading, three ways: as image folders are read by default (no inversion,
area-average resizing: what `eval --data` did before 2026-11-30), inverted (ink = 255, as the Omniglot loader), and
inverted with nearest-neighbour resizing (the loader's own preprocessing: what `eval --data` and `adapt` now do for
an Omniglot run). Same episodes for all three (the run's seed).
"""

from __future__ import annotations

import argparse
import io as _io
import random
import tempfile
import zipfile
from pathlib import Path

from reptile_fn import io
from reptile_fn import run as R
from reptile_fn.datasets import omniglot_dir
from reptile_fn.tasks.omniglot import load_split

READINGS = {"as a plain image folder (no inversion, box)": ["tasks.invert=never", "tasks.resample=box"],
            "inverted, box": ["tasks.invert=light", "tasks.resample=box"],
            "inverted, nearest (the Omniglot loader's; the default now)": ["tasks.invert=light", "tasks.resample=nearest"]}


def write_characters(data_dir: str, folder: Path, n: int, seed: int) -> list[str]:
    """``n`` held-out test characters of the standard protocol as class folders of the zips' PNGs."""
    from PIL import Image

    test = load_split("test", data_dir, protocol="standard", seed=0).characters
    chosen = set(random.Random(seed).sample(list(test), n))
    for set_name in ("background", "evaluation"):
        with zipfile.ZipFile(omniglot_dir(data_dir) / f"images_{set_name}.zip") as z:
            for name in z.namelist():
                parts = name.split("/")
                if len(parts) == 4 and name.endswith(".png") and f"{parts[1]}/{parts[2]}" in chosen:
                    target = folder / f"{parts[1]}_{parts[2]}" / parts[3]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.open(_io.BytesIO(z.read(name))).convert("L").save(target)
    return sorted(chosen)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--checkpoint", default="omniglot-5w1s")
    ap.add_argument("--characters", type=int, default=20)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "characters"
        chosen = write_characters(args.data_dir, folder, args.characters, args.seed)
        for label, overrides in READINGS.items():
            run, params, state, _ = R.load(args.checkpoint, overrides, data=folder)
            curve = R.evaluate_init(run, params, R.run_keys(run.cfg.seed).eval_final, args.episodes, args.steps,
                                    state=state)
            mean, ci = 100 * curve["metric"]["mean"][-1], 100 * curve["metric"]["ci95"][-1]
            rows[label] = {"accuracy": round(mean, 2), "ci95": round(ci, 2), "inverted_images": run.tasks.inverted}
            print(f"{label:<60} {mean:6.2f} ± {ci:.2f} %  ({run.tasks.inverted} images inverted)", flush=True)
    out = {"checkpoint": args.checkpoint, "characters": chosen, "episodes": args.episodes, "steps": args.steps,
           "n_way": run.cfg.tasks.n_way, "k_shot": run.cfg.tasks.k_shot, "query_size": run.cfg.tasks.query_size,
           "transductive": run.cfg.eval.transductive, "readings": rows,
           "command": (f"uv run python benchmarks/omniglot_own_data.py --data-dir DIR --checkpoint {args.checkpoint} "
                       f"--characters {args.characters} --episodes {args.episodes} --steps {args.steps} --seed {args.seed}")}
    if args.json:
        io.write_json(args.json, out, indent=2)
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
