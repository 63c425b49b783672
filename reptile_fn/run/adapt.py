"""Use a meta-learned initialization: adapt it to a user's own labelled examples, label new ones.

``adapt_to(checkpoint, support, query)`` loads a run (or a shipped initialization) without its training
data, reads the support set (image runs: a folder of class subfolders; text runs: a CSV of text,label
rows), adapts with the run's own inner loop (its learned rates and kept inner state, ``eval.inner_steps``
steps unless told otherwise), and scores every query item: a folder of images or a CSV of texts, with
labels (class subfolders, a label column) or without. Each query item is scored on its own beside the
support set (``models.nontransductive``), so its label never depends on which other items were asked
about. ``save_predictions`` writes ``predictions.csv``, ``predictions.json`` and ``adapted.safetensors``
(a checkpoint of the adapted parameters that ``reptile_fn.run.load`` reads back).
"""

from __future__ import annotations

import csv as _csv
import dataclasses
import warnings
import io as _io
from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map_with_path

from reptile_fn import checkpoint, io, progress
from reptile_fn import config as C
from reptile_fn.errors import ConfigError, DataError
from reptile_fn.inner import adapt
from reptile_fn.models import nontransductive
from reptile_fn.run.build import Run, evaluation_loop, load
from reptile_fn.tree import Tree

QUERY_CHUNK = 64  # query items scored at once (each with the whole support set)
SETTLE_EVERY = 10  # adaptation steps per evaluation: memory stays flat in --steps, a signal stops it within ~10 steps


class Predictions(NamedTuple):
    """Class probabilities of every query item after adapting on the support set."""

    classes: tuple[str, ...]  # the support set's class names; class i is column i of ``probabilities``
    items: tuple[str, ...]  # the query items: image files, or "line N" of the query CSV
    probabilities: np.ndarray  # (n_items, n_classes)
    labels: np.ndarray | None  # the query items' true classes (indices into ``classes``), when given
    params: Tree  # the adapted parameters
    steps: int
    inverted: int = 0  # support and query images turned over (255 − pixel) to match the run's training images

    @property
    def predicted(self) -> np.ndarray:
        return np.argmax(self.probabilities, axis=1)

    @property
    def accuracy(self) -> float | None:
        return None if self.labels is None else float(np.mean(self.predicted == self.labels))


class Labelled(NamedTuple):
    """Model inputs with their class names (``labels`` index ``classes``; None when unlabelled)."""

    x: mx.array
    labels: np.ndarray | None
    classes: tuple[str, ...]
    items: tuple[str, ...]
    inverted: int = 0  # images tasks.invert turned over (255 − pixel)


def adapt_to(checkpoint_path: str | Path, support: str | Path, query: str | Path, *, steps: int | None = None,
             overrides: list[str] = (), seed: int = 0) -> tuple[Predictions, Run, dict]:
    """Adapt the run at ``checkpoint_path`` (or a shipped initialization's name) on ``support`` and label
    ``query``; returns ``(predictions, run, algorithm state)``."""
    run, params, state, _ = load(checkpoint_path, overrides, with_tasks=False)
    reader = _reader(run)
    shots = reader(Path(support), None)
    n = len(shots.classes)
    if n < 2:  # as the image reader: one class leaves nothing to classify
        raise DataError(f"{support} has one class only ({shots.classes[0]!r}); the support set needs labelled examples "
                        "of two or more classes")
    if n > run.cfg.tasks.n_way:  # more classes than the head has outputs: grow it (see _widened)
        _check_classes(n, support)
        cfg = dataclasses.replace(run.cfg, tasks=dataclasses.replace(run.cfg.tasks, n_way=n))
        run = dataclasses.replace(run, cfg=cfg, shapes=(run.in_dim, n))
        params, state = _widened(params, n), _widened(state, n)
    asked = reader(Path(query), shots.classes)
    if io.same_data(support, query):
        warnings.warn(f"the query {query} is the support set: the labels and accuracy are on the examples adapted to "
                      "(training accuracy), not on new ones; pass other examples to see how the init generalises")
    if C.model_kind(run.cfg) == "text":  # sentences of both sets padded to one length (padding is masked)
        length = max(shots.x.shape[-1], asked.x.shape[-1])
        shots, asked = (d._replace(x=mx.pad(d.x, [(0, 0), (0, 0), (0, length - d.x.shape[-1])])) for d in (shots, asked))
    loop = evaluation_loop(run, state, steps=steps)
    with progress.task(f"adapting ({loop.steps} steps on {len(shots.labels)} examples)", loop.steps) as bar:
        adapted = adapt(loop, run.model.apply, run.loss, params, (shots.x, mx.array(shots.labels)), mx.random.key(seed),
                        settle_every=SETTLE_EVERY, on_settle=bar.advance).params
    score = mx.compile(lambda p, sx, qx: nontransductive(run.model.apply)(p, sx, qx)[:, : len(shots.classes)])
    probs = [mx.softmax(score(adapted, shots.x, asked.x[i:i + QUERY_CHUNK]), axis=-1)
             for i in range(0, asked.x.shape[0], QUERY_CHUNK)]
    probabilities = np.concatenate([np.array(p) for p in probs])
    return (Predictions(shots.classes, asked.items, probabilities, asked.labels, adapted, loop.steps,
                        shots.inverted + asked.inverted), run, state)


def _check_classes(n: int, support) -> None:
    """A DataError for more support classes than ``tasks.n_way`` may be (its limit): each one is a head output."""
    try:
        C.check_limit("tasks.n_way", n, "adapt")
    except ConfigError:
        raise DataError(f"{support} has {n:,} classes, and the head needs an output for each: more than the "
                        f"{C.LIMITS['tasks.n_way'].most:,} reptile_fn allows; check that its labels are class names, "
                        f"not texts or ids (or set {C.NO_LIMITS}=1 if you really mean that many)") from None


def _widened(tree: Tree, n: int) -> Tree:
    """``tree`` with every head leaf (a path ending ``head.w`` or ``head.b``: the parameters, and the optimizer
    moments or learned rates kept for them) grown to ``n`` outputs along its last axis, each new output the
    mean of the meta-learned ones. A meta-learned head's outputs are interchangeable (task labels are
    arbitrary), so their mean is the natural start for a class it never had; the support set then tells the
    outputs apart. The model's ``apply`` takes a head of any width."""
    def grow(path: str, a: mx.array) -> mx.array:
        if path.split(".")[-2:-1] != ["head"] or a.shape[-1] >= n:
            return a
        mean = mx.mean(a, axis=-1, keepdims=True)
        return mx.concatenate([a, mx.broadcast_to(mean, (*a.shape[:-1], n - a.shape[-1]))], axis=-1)

    return tree_map_with_path(grow, tree)


def save_predictions(pred: Predictions, run: Run, state, out_dir: str | Path, *, source: str) -> list[Path]:
    """``predictions.csv`` (item, predicted class, true class if known, one probability column per class),
    ``predictions.json`` (the same, plus accuracy) and ``adapted.safetensors``; returns their paths."""
    out = Path(out_dir)
    buf = _io.StringIO()
    writer = _csv.writer(buf)
    writer.writerow(["item", "predicted", *(["label"] if pred.labels is not None else []),
                     *[f"p({c})" for c in pred.classes]])
    rows = []
    for i, item in enumerate(pred.items):
        truth = [pred.classes[pred.labels[i]]] if pred.labels is not None else []
        probs = {c: round(float(p), 6) for c, p in zip(pred.classes, pred.probabilities[i])}
        writer.writerow([item, pred.classes[pred.predicted[i]], *truth, *probs.values()])
        rows.append({"item": item, "predicted": pred.classes[pred.predicted[i]],
                     **({"label": truth[0]} if truth else {}), "probabilities": probs})
    written = [io.write_text(out / "predictions.csv", buf.getvalue()),
               io.write_json(out / "predictions.json", {"checkpoint": source, "steps": pred.steps, "classes": list(pred.classes),
                                                         "accuracy": pred.accuracy, "predictions": rows,
                                                         **({"inverted_images": pred.inverted}
                                                            if C.model_kind(run.cfg) == "conv4" else {})})]
    meta = {"config": C.to_dict(run.cfg), "iteration": 0, "shapes": [list(run.in_dim) if isinstance(run.in_dim, tuple)
                                                                     else run.in_dim, run.shapes[1]],
            "adapted": {"from": source, "steps": pred.steps, "classes": list(pred.classes)}}
    written.append(checkpoint.save(out / "adapted.safetensors", pred.params, state, meta, reference=run.rebuilt_init))
    return written


# --- reading the user's examples ------------------------------------------------------------------

def _reader(run: Run):
    """``read(path, classes) -> Labelled`` for the run's kind of input (images or sentences)."""
    kind = C.model_kind(run.cfg)
    if kind == "conv4":
        from reptile_fn.tasks.images import own_images

        t = run.cfg.tasks
        invert, resample = own_images(t.dataset, t.invert, t.resample)
        return lambda path, classes: _images(_kind_of(path, "image", run), classes, run.in_dim, invert, resample)
    if kind == "text":
        from reptile_fn.text.encoder import load_tokenizer

        tokenizer = load_tokenizer(run.cfg.model.encoder)
        t = run.cfg.tasks
        return lambda path, classes: _texts(_kind_of(path, "text", run), classes, tokenizer, t.text_column, t.label_column)
    raise DataError(f"`adapt` takes image runs (conv4) and text runs; this run's model is {kind} "
                    f"(tasks.dataset = {run.cfg.tasks.dataset}), whose tasks come from the built-in families")


def _kind_of(path: Path, kind: str, run: Run) -> Path:
    """``path`` unless it is plainly the other kind of data: a CSV for an image run, a folder for a text run."""
    source = f"this is {'an image' if kind == 'image' else 'a text'} run (tasks.dataset = {run.cfg.tasks.dataset})"
    if kind == "image" and path.suffix.lower() in (".csv", ".tsv", ".txt"):
        raise DataError(f"{path} is a text file, but {source}; give a folder (or .zip) of class subfolders of images")
    if kind == "text" and path.is_dir():
        raise DataError(f"{path} is a folder, but {source}; give a CSV file of sentences (text,label columns)")
    return path


def _images(path: Path, classes: tuple[str, ...] | None, in_dim, invert: str = "never",
            resample: str = "box") -> Labelled:
    """The images at ``path`` as the model takes them (resized with ``resample``, turned over as ``invert`` says)."""
    from reptile_fn.tasks import image_files, images

    size, _, channels = in_dim
    single = classes is not None and image_files.is_image_file(path)  # one image to label
    one = image_files.only_folder(path) if classes is not None and not single else None  # a zip's folder, one class
    wrapped = one is not None and one not in classes and path.suffix.lower() == ".zip"  # the folder a zip was made of
    if wrapped:
        from reptile_fn import progress

        progress.note(f"note: {path} holds one folder, {one!r}, which is no support class: its images are read as items "
                      "to label (no accuracy); name it after a support class to score them")
    if single:
        pixels, items = image_files.read_file(path, size, resample=resample)
        labels, found = None, classes
    elif classes is None or (image_files.has_class_folders(path) and not wrapped):
        minimum = 2 if classes is None else 1  # a labelled query may hold a single class
        data = images.load_images(path, image_size=size, cache=False, min_classes=minimum, resample=resample)
        labels = np.repeat(np.arange(len(data.classes)), data.counts)
        with image_files.open_source(path) as (listing, _, _, _):
            items = [name for files in image_files.find_classes(listing, str(path), minimum)[1] for name in files]
        pixels, found = data.images, data.classes
    else:  # a plain folder of images to label
        pixels, items = image_files.read_folder(path, size, inside=one if wrapped else None, resample=resample)
        labels, found = None, classes
    pixels = images.with_channels(pixels, channels)
    flip = images.inverts(pixels, invert)
    x = images.decode(mx.array(images.inverted(pixels, flip)))
    return _match(Labelled(x, labels, tuple(found), tuple(items), int(flip.sum())), classes, path)


def _texts(path: Path, classes: tuple[str, ...] | None, tokenizer, text_column: str, label_column: str) -> Labelled:
    from reptile_fn.tasks.csv import read_texts
    from reptile_fn.text.encoder import stack_inputs, tokenize

    texts, names, lines = read_texts(path, text_column=text_column, label_column=label_column,
                                     labels="required" if classes is None else "optional")
    found = tuple(sorted(set(names))) if names is not None else classes
    labels = np.array([found.index(n) for n in names]) if names is not None else None
    ids, mask = tokenize(tokenizer, list(texts))
    return _match(Labelled(stack_inputs(ids, mask), labels, found, tuple(f"line {n}" for n in lines)), classes, path)


def _match(data: Labelled, classes: tuple[str, ...] | None, path: Path) -> Labelled:
    """A labelled query set re-indexed by the support set's classes; a class the support set lacks is an error."""
    if classes is None or data.labels is None or data.classes == classes:
        return data
    unknown = sorted(set(data.classes) - set(classes))
    unlabelled = ("put the images directly in the query folder" if path.is_dir() or path.suffix.lower() == ".zip"
                  else "leave out the label column")
    if unknown:
        raise DataError(f"{path} has classes the support set does not ({', '.join(map(repr, unknown[:5]))}); a query "
                        f"item can only be labelled with a support class ({', '.join(map(repr, classes))}); to label "
                        f"items without scoring them, {unlabelled}")
    index = np.array([classes.index(c) for c in data.classes])
    return data._replace(labels=index[data.labels], classes=classes)
