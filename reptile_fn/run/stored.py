"""What a saved run needs to be scored on other data: the shapes its model was built for and the settings that
point its evaluation at a user's folder of images or CSV."""

from __future__ import annotations

import json
from pathlib import Path

from reptile_fn import config as C
from reptile_fn import io
from reptile_fn.errors import CheckpointError, ConfigError
from reptile_fn.tasks import make_distribution


def own_data_overrides(cfg: C.Config, shapes: tuple, path: str | Path) -> list[str]:
    """The settings that point a run's evaluation at data it never trained on: a folder of images (image
    runs, resized to the run's input size) or a CSV (text runs), every class held out."""
    if cfg.tasks.path and io.same_data(cfg.tasks.path, path):
        raise ConfigError(f"--data {path} is the data this run meta-trained on (its tasks.path), so its classes are "
                          "not held out; `eval` without --data scores the run's held-out classes, or give other data")
    text_file = Path(path).is_file() and Path(path).suffix.lower() in (".csv", ".tsv", ".txt")
    full = Path(path).expanduser().resolve() if Path(path).expanduser().exists() else Path(path)  # recorded whole
    path = json.dumps(str(full))  # a JSON string is a YAML string: never parsed as a number, null or comment
    kind = C.model_kind(cfg)
    if kind == "conv4" and text_file:
        raise ConfigError(f"--data {path} is a text file, but this is an image run; pass a folder of class subfolders "
                          "of images (or a zip of one)")
    if kind == "conv4":  # an Omniglot run's images as its loader made them: ink bright on dark, nearest-neighbour
        from reptile_fn.tasks.images import own_images

        omniglot = ["tasks.protocol=auto"] if cfg.tasks.dataset == "omniglot" else []
        invert, resample = own_images(cfg.tasks.dataset, cfg.tasks.invert, cfg.tasks.resample)
        return ["tasks.dataset=images", f"tasks.path={path}", "tasks.test_split=all", *omniglot,
                f"tasks.invert={invert}", f"tasks.resample={resample}",
                f"model.image_size={shapes[0][0]}", f"model.channels={shapes[0][2]}"]
    if kind == "text" and Path(full).is_dir():
        raise ConfigError(f"--data {path} is a folder, but this is a text run; pass a CSV file of text,label rows")
    if kind == "text":
        return ["tasks.dataset=csv", f"tasks.path={path}", "tasks.test_split=all"]
    raise ConfigError(f"--data takes image runs (a folder of class subfolders) and text runs (a CSV); this run's tasks "
                      f"are the built-in {', '.join(cfg.tasks.families)} families")


def stored_shapes(cfg: C.Config, arrays: dict, meta: dict) -> tuple:
    """``(in_dim, out_dim)`` of a saved run's model, from its metadata (runs since 2026-11-29 record it), else
    from its config and the first convolution's weights."""
    if "shapes" in meta:
        return _checked_shapes(meta["shapes"], C.model_kind(cfg))
    kind = C.model_kind(cfg)
    if kind == "mlp":
        t = cfg.tasks
        families = make_distribution(t.families, k_shot=t.k_shot, query_size=t.query_size,
                                     num_train_tasks=t.num_train_tasks, seed=cfg.seed)
        return families.in_dim, families.out_dim
    if kind == "text":
        return (2, 0), cfg.tasks.n_way  # the encoder takes any sentence length
    conv0 = next(a for k, a in arrays.items() if k.endswith("conv0.w"))
    size = 28 if cfg.tasks.dataset == "omniglot" else cfg.model.image_size
    return (size, size, int(conv0.shape[-1])), cfg.tasks.n_way


def config_shapes(cfg: C.Config) -> tuple | None:
    """``(in_dim, out_dim)`` a config's model takes, when its settings alone say so (no data read): Omniglot's 28×28
    drawings, sentences, images with ``model.channels`` set; None when only the data can tell (synthetic families
    are built without data anyway; images of unknown channels)."""
    t, kind = cfg.tasks, C.model_kind(cfg)
    if t.dataset == "omniglot":
        return (28, 28, 1), t.n_way
    if kind == "text":
        return (2, 0), t.n_way
    if t.dataset == "images" and cfg.model.channels is not None:
        return (cfg.model.image_size, cfg.model.image_size, cfg.model.channels), t.n_way
    return None


def _checked_shapes(shapes, kind: str) -> tuple:
    """The ``shapes`` metadata as ``(in_dim, out_dim)``, if it is what a ``kind`` model records: sizes a model can
    have (an image's three, a sentence's two, a vector's one); else a CheckpointError (the file was edited)."""
    size = lambda v, top: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top  # noqa: E731
    rank = {"conv4": 3, "text": 2}.get(kind)
    in_dim, out_dim = shapes if isinstance(shapes, list) and len(shapes) == 2 else (None, None)
    if isinstance(in_dim, list) and len(in_dim) == rank and all(size(d, 4096) for d in in_dim) and size(out_dim, 100_000) \
            and out_dim >= 1 and (kind != "conv4" or min(in_dim) >= 1):
        return tuple(in_dim), out_dim
    if rank is None and size(in_dim, 10_000_000) and in_dim >= 1 and size(out_dim, 10_000_000) and out_dim >= 1:
        return in_dim, out_dim
    raise CheckpointError(f"the checkpoint's shapes metadata ({json.dumps(shapes)[:60]}) is not the input and output "
                          f"sizes of a {kind} model: the file was edited or damaged; use a checkpoint written by "
                          "`reptile-fn train` (or a shipped name)")
