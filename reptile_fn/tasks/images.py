"""A user's own image data set (a folder or a zip of class folders) as an N-way K-shot task sampler.

Layouts. ``path`` is a folder or a ``.zip`` holding either ``<class>/<image>`` (one level) or
``<group>/<class>/<image>`` (two levels, like Omniglot's ``<Alphabet>/<character>``); the layout is read from the
depth of the images (all at depth 2 below the root: one level; all at 3: two; a mix is an error naming one of each).
When every image lies under one top folder and deeper than one level, that folder is the root (a zip of
``images_background/...``, or a folder holding the unzipped copy). Images are ``.png .jpg .jpeg .bmp .gif .webp``
(any case; GIF and WebP: the first frame); other files are ignored, and so are hidden files and folders (a name
starting with ".") and ``__MACOSX``. A zip is read in memory, never extracted. Classes are ordered by (group, class
name) and the images of a class by file name; a class of two levels is named ``"group/class"``, and one level's
group is the class itself.

Modes and resizing. Every image is turned upright (EXIF orientation), stretched to ``image_size × image_size`` (not
cropped: a crop could cut the object off; crop beforehand if the aspect ratio matters) with Pillow's ``BOX`` filter,
the area average: the usual case is shrinking large photos, where BOX is exact for whole factors and, unlike
LANCZOS, never rings or overshoots (no halos around strokes or edges); enlarging a small image with BOX is close to
nearest-neighbour. Transparency is composited onto white; 16-bit and float images are scaled to 0..255. An image is
grayscale if its mode is (1, L, LA, I, I;16, F) or its resized pixels all have R = G = B (a gray GIF or WebP decodes
as colour). If every image is grayscale the set has one channel, else every image is RGB (three channels, gray ones
repeated). Pixels are stored as uint8 (N, S, S, C).

Storage. ``ImageSet`` keeps the images flat: class c is rows ``offsets[c] .. offsets[c] + counts[c]``, so one large
class pads no other. Decoded arrays are cached in ``cache_dir()/images/`` (see ``datasets.cached_arrays``), keyed on
the path, ``image_size``, and the zip's size and mtime or, for a folder, a digest of every image's relative path,
size and mtime: adding, changing or removing an image rebuilds the cache. The cache is written only once everything
decoded. Episodes (``ImageTasks``) are, as Omniglot's, a pure gather from those arrays on the device
(``episode.sample_class_episodes`` with counts and offsets) decoded to float32 NHWC in [0, 1]: ``mx.vmap``- and
``mx.compile``-safe.

Splits (``split_images``). Class-disjoint and seeded (``splits.fraction_split``): with two levels whole groups are
held out together ("val" and "test" get those fractions of the groups), with one level the classes themselves are
shuffled; "all" is every class.

Errors. Bad data raises one ``DataError`` naming the path, file or class and the fix: a missing path, no images,
images outside class folders, a mixed or too deep layout, one class only, a class folder without images, a corrupt
zip, an unreadable, truncated or non-image file, and an image whose header claims more than ``MAX_PIXELS`` pixels
(refused before it is decoded).
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple, Sequence

from reptile_fn import datasets
from reptile_fn.episode import Episode, check_classes, sample_class_episodes
from reptile_fn.errors import ConfigError, DataError, check_choice, check_int
from reptile_fn.tasks.image_files import LAYOUTS, RESAMPLE, find_classes, open_source, read_classes
from reptile_fn.tasks.splits import fraction_split

import mlx.core as mx
import numpy as np

TRAIN_SPLITS = ("train", "all")
TEST_SPLITS = ("test", "val", "all")
INVERT = ("never", "always", "light")  # tasks.invert


def own_images(dataset: str, invert: str, resample: str) -> tuple[str, str]:
    """``(invert, resample)`` with which a run's model takes new images: an Omniglot run's as its loader made them
    (ink = 255 from the binary scans, resized nearest-neighbour: "light" inverts dark strokes on a light background);
    an image-folder run's as it was trained (``tasks.invert``, ``tasks.resample``)."""
    return ("light", "nearest") if dataset == "omniglot" else (invert, resample)


def inverts(images: np.ndarray, invert: str) -> np.ndarray:
    """Which of the uint8 images (n, S, S, C) ``invert`` turns over: all ("always"), none ("never"), or ("light")
    each on a light background: three quarters or more of its pixels light (> 191), as dark strokes on white paper
    (Omniglot's scans: 82-98 %). Image by image, so a set of mixed polarity, or a query unlike its support set, ends up
    one way; a photo or a colour image (the demo set's: at most 63 %) is left as it is."""
    check_choice("tasks.invert", invert, INVERT)
    if invert != "light":
        return np.full(len(images), invert == "always")
    return (images.reshape(len(images), -1) > 191).mean(axis=1) >= 0.75


def inverted(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """``images`` with those ``flip`` marks turned over (255 − pixel)."""
    return np.where(flip.reshape(-1, *([1] * (images.ndim - 1))), 255 - images, images) if flip.any() else images
CACHE_VERSION = 1


class ImageSet(NamedTuple):
    """Decoded images, flat: ``images`` uint8 (n_images, S, S, C); class c is rows
    ``offsets[c] .. offsets[c] + counts[c] - 1``, named ``classes[c]`` in group ``groups[c]``."""

    images: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    classes: tuple[str, ...]
    groups: tuple[str, ...]
    channels: int

    @property
    def grouped(self) -> bool:
        """Whether the classes have real groups (a two-level layout)."""
        return self.groups != self.classes

    def subset(self, class_indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The classes ``class_indices``, in that order, still flat."""
        index = np.asarray(class_indices, dtype=np.int64).reshape(-1)
        counts = self.counts[index].astype(np.int32)
        rows = [np.arange(self.offsets[c], self.offsets[c] + self.counts[c]) for c in index]
        images = self.images[np.concatenate(rows)] if rows else self.images[:0]
        return ImageSet(images, counts, _offsets(counts), tuple(self.classes[c] for c in index),
                        tuple(self.groups[c] for c in index), self.channels)


def _offsets(counts: np.ndarray) -> np.ndarray:
    return (np.cumsum(counts) - counts).astype(np.int32)


def load_images(path: str | os.PathLike, *, image_size: int = 28, cache: bool = True, min_classes: int = 2,
                resample: str = "box") -> ImageSet:
    """Every image of the folder or ``.zip`` at ``path``, decoded to ``image_size`` square (from the cache when
    it is current); see the module docstring for layouts, modes, resizing and errors."""
    check_int("image_size", image_size, 1, "pixels per side of the resized images")
    check_choice("tasks.resample", resample, RESAMPLE)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"image data set {path} not found; give a folder (or .zip) laid out as {LAYOUTS}")
    if not path.is_dir() and path.suffix.lower() != ".zip":
        raise DataError(f"{path} is a file but not a .zip; give a folder or a .zip laid out as {LAYOUTS}")
    path = path.resolve()
    with open_source(path) as (listing, opener, show, fingerprint):
        groups_classes, names = find_classes(listing, str(path), min_classes)

        def build() -> dict[str, np.ndarray]:
            images, counts = read_classes(names, image_size, opener, show, cached=cache, resample=resample)
            return {"images": images, "counts": counts, "offsets": _offsets(counts),
                    "classes": np.array([c for _, c in groups_classes], dtype=np.str_),
                    "groups": np.array([g for g, _ in groups_classes], dtype=np.str_)}

        def valid(a: dict) -> bool:
            images, counts = a["images"], a["counts"]
            return (images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:3] == (image_size, image_size)
                    and images.shape[3] in (1, 3) and len(counts) == len(a["classes"]) == len(a["groups"])
                    and int(counts.sum()) == images.shape[0] and np.array_equal(a["offsets"], _offsets(counts)))

        size = f"{image_size}px" + ("" if resample == "box" else f"-{resample}")
        arrays = datasets.cached_arrays(path, "images", size, build, valid=valid, version=CACHE_VERSION,
                                        use=cache, fingerprint=fingerprint)
    data = ImageSet(arrays["images"], arrays["counts"].astype(np.int32), arrays["offsets"].astype(np.int32),
                    tuple(arrays["classes"].tolist()), tuple(arrays["groups"].tolist()), int(arrays["images"].shape[-1]))
    _warn_of_twins(data, path)
    return data


def _warn_of_twins(data: ImageSet, path: Path) -> None:
    """A warning line where two classes share an image (as decoded: the same file, or a copy of a class) or two class
    names differ only in Unicode normalisation ('é' as one character or as e + accent): both read fine, but the
    first makes labels contradict each other and the second shows two classes under one name."""
    from reptile_fn import progress

    owner, shared, repeated = {}, set(), {}
    for c, (start, n) in enumerate(zip(data.offsets.tolist(), data.counts.tolist())):
        mine = set()
        for image in data.images[start:start + n]:
            key = image.tobytes()
            first = owner.setdefault(key, c)
            if first != c:
                shared.add((first, c))
            elif key in mine:
                repeated[c] = repeated.get(c, 0) + 1
            mine.add(key)
    if data.channels == 3 and len(data.images) and int((data.images.max(-1) - data.images.min(-1)).max()) <= 2:
        progress.note(f"warning: every image in {path} is gray but for lossy-coding noise (its colour channels differ by "
                      "2 or less, as gray WebP or JPEG photos can), so the set reads as colour and gets a 3-channel "
                      "model; for a gray one, --set model.channels=1")
    if repeated:
        c = min(repeated)
        progress.note(f"warning: {len(repeated)} class(es) in {path} hold the same image more than once (e.g. "
                      f"{data.classes[c]!r}: {repeated[c]} repeat(s)): a copy drawn as support and as query inflates "
                      "accuracy; remove the copies")
    if shared:
        a, b = min(shared)
        progress.note(f"warning: {len(shared)} pair(s) of classes in {path} share an image (e.g. {data.classes[a]!r} and "
                      f"{data.classes[b]!r}): an image under two labels cannot be classified; remove the copies")
    seen = {}
    for name in data.classes:
        twin = seen.setdefault(unicodedata.normalize("NFC", name), name)
        if twin != name:
            progress.note(f"warning: the classes {ascii(twin)} and {ascii(name)} in {path} differ only in how their names are "
                          "encoded (Unicode normalisation) and print the same; rename one")
            break


def split_images(data: ImageSet, *, seed: int = 0, val: float = 0.2, test: float = 0.2) -> dict[str, np.ndarray]:
    """Class indices of "train", "val", "test" (class-disjoint; by group when ``data.grouped``, so a group is
    never cut) and "all", seeded (see the module docstring)."""
    if not (0 <= val < 1 and 0 < test < 1 and val + test < 1):
        raise ConfigError(f"the held-out fractions must have 0 <= val, 0 < test and val + test < 1; got val = {val}, "
                          f"test = {test}")
    split = fraction_split(data.groups, val=val, test=test, seed=seed, what="group" if data.grouped else "class")
    return {**split, "all": np.arange(len(data.classes), dtype=np.int64)}


def with_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 images (n, S, S, C) with ``channels`` channels: gray → RGB by repeating, RGB → gray by luminance
    (ITU-R 601 weights, as Pillow's convert("L"))."""
    check_choice("channels", channels, (1, 3))
    if images.shape[-1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    gray = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]


def decode(images: mx.array) -> mx.array:
    """uint8 images (..., S, S, C) to episode inputs: float32 in [0, 1], NHWC."""
    return images.astype(mx.float32) * (1.0 / 255.0)


@dataclass(frozen=True, eq=False)
class ImageTasks:
    """N-way K-shot episodes from a user's images (the ``Sampler`` protocol). ``train_*`` / ``test_*``: flat uint8
    images (n_images, S, S, C) on the device, int32 counts and offsets per class, the largest count as a Python int,
    and the class names; ``sample_train`` draws from the first, ``sample_test`` from the second."""

    train_images: mx.array
    train_counts: mx.array
    train_offsets: mx.array
    train_n_max: int
    test_images: mx.array
    test_counts: mx.array
    test_offsets: mx.array
    test_n_max: int
    n_way: int
    k_shot: int
    query_size: int
    train_split: str = "train"
    test_split: str = "test"
    train_classes: tuple[str, ...] = ()
    test_classes: tuple[str, ...] = ()
    inverted: int = 0  # how many images tasks.invert turned over (255 − pixel)

    kind: ClassVar[str] = "classification"

    def __post_init__(self) -> None:
        check_int("n_way", self.n_way, 1, "classes per episode")
        check_int("k_shot", self.k_shot, 1, "support examples per class")
        check_int("query_size", self.query_size, 1, "query examples per class")
        for name in ("n_way", "k_shot", "query_size", "train_n_max", "test_n_max"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if (shapes := [tuple(self.train_images.shape[1:]), tuple(self.test_images.shape[1:])])[0] != shapes[1]:
            raise ConfigError(f"train and test images differ in shape: {shapes[0]} and {shapes[1]}")
        for prefix, split in (("train", self.train_split), ("test", self.test_split)):
            self._check(prefix, split)

    def _check(self, prefix: str, split: str) -> None:
        images, names = getattr(self, f"{prefix}_images"), getattr(self, f"{prefix}_classes")
        counts, offsets = np.array(getattr(self, f"{prefix}_counts")), np.array(getattr(self, f"{prefix}_offsets"))
        if (images.ndim != 4 or images.dtype != mx.uint8 or images.shape[3] not in (1, 3) or counts.ndim != 1
                or not len(counts) or offsets.shape != counts.shape or (names and len(names) != len(counts))
                or counts.max() > getattr(self, f"{prefix}_n_max") or offsets.min() < 0
                or (offsets + counts).max() > images.shape[0]):
            raise ConfigError(f"{prefix}_images must be uint8 (n_images, S, S, 1 or 3) with {prefix}_counts and "
                              f"{prefix}_offsets (n_classes,) inside it and {prefix}_n_max >= every count; got "
                              f"{images.dtype} {tuple(images.shape)} and {len(counts)} counts")
        smallest = int(np.argmin(counts))
        try:
            check_classes(f"the {split!r} split", len(counts), int(counts[smallest]), n_way=self.n_way,
                          k_shot=self.k_shot, query_size=self.query_size, unit="images")
        except ConfigError as e:
            if self.k_shot + self.query_size <= counts[smallest]:
                raise
            name = names[smallest] if names else f"number {smallest}"
            fewest = int(counts[smallest])
            raise ConfigError(f"{e}. Its smallest class is {name!r} ({fewest} image{'s' if fewest != 1 else ''}): add "
                              "images to it or remove it") from None

    @property
    def in_dim(self) -> tuple[int, int, int]:
        """(S, S, C): episode inputs are NHWC."""
        return tuple(int(d) for d in self.train_images.shape[1:])

    @property
    def out_dim(self) -> int:
        """The number of classes per episode (n_way)."""
        return self.n_way

    def sample_train(self, key: mx.array, n_tasks: int) -> Episode:
        """n_tasks meta-training episodes (from the train split)."""
        return self._sample("train", key, n_tasks)

    def sample_test(self, key: mx.array, n_tasks: int) -> Episode:
        """n_tasks held-out episodes (from the test split chosen at construction)."""
        return self._sample("test", key, n_tasks)

    def _sample(self, prefix: str, key: mx.array, n_tasks: int) -> Episode:
        images, counts, offsets, n_max = (getattr(self, f"{prefix}_{f}") for f in ("images", "counts", "offsets", "n_max"))
        return sample_class_episodes(images, key, n_tasks, n_way=self.n_way, k_shot=self.k_shot, query_size=self.query_size,
                                     counts=counts, offsets=offsets, n_max=n_max, decode=decode)


def make_image_tasks(path: str | os.PathLike, *, n_way: int = 5, k_shot: int = 1, query_size: int = 5,
                     image_size: int = 28, channels: int | None = None, train_split: str = "train",
                     test_split: str = "test", seed: int = 0, val: float = 0.2, test: float = 0.2,
                     cache: bool = True, invert: str = "never", resample: str = "box") -> ImageTasks:
    """An episode sampler over the images at ``path``: ``train_split`` ("train" or "all") for ``sample_train``,
    ``test_split`` ("test", "val" or "all": every class, to score a run on a data set it never trained on) for
    ``sample_test``. ``seed``, ``val`` and ``test`` choose the split (``split_images``), not the sampling key.
    ``channels``: 1 or 3 to convert every image to that many (a model's input), None to keep the data's.
    ``invert``: never, always, or light (``inverts``: when the set is mostly light), decided once for the whole set."""
    check_choice("train_split", train_split, TRAIN_SPLITS)
    check_choice("test_split", test_split, TEST_SPLITS)
    data = load_images(path, image_size=image_size, cache=cache, resample=resample)
    if channels is not None:
        data = data._replace(images=with_channels(data.images, channels), channels=channels)
    flip = inverts(data.images, invert)
    data = data._replace(images=inverted(data.images, flip))
    everything = {"all": np.arange(len(data.classes))}  # "all" twice needs no split (nor 3 classes or groups)
    index = split_images(data, seed=seed, val=val, test=test) if {train_split, test_split} != {"all"} else everything

    def device(split: str) -> tuple:
        part = data.subset(index[split])
        if not part.classes:
            raise ConfigError(f"the {split!r} split of {path} is empty (val = {val}); choose a val fraction > 0 or "
                              "another test_split")
        mx.eval(*(arrays := [mx.array(a) for a in (part.images, part.counts, part.offsets)]))
        return (*arrays, int(part.counts.max())), part.classes

    train, train_classes = device(train_split)
    held, test_classes = device(test_split)
    return ImageTasks(*train, *held, n_way, k_shot, query_size, train_split, test_split, train_classes, test_classes,
                      int(flip.sum()))
