"""Omniglot (Lake et al. 2015): the official zips, the few-shot splits, and an N-way K-shot sampler.

Images. Each zip ``images_<set>.zip`` holds ``images_<set>/<Alphabet>/characterNN/CCCC_DD.png``:
105×105 1-bit PNGs, black ink on white, 20 drawers (DD = 01..20) per character. A character is
decoded to uint8 (20, 28, 28) with ink = 255 and background = 0, drawer d at index d − 1. The
default resampling is ``"nearest"``: it is what the reference code of MAML (Finn et al. 2017,
``resize((28, 28), LANCZOS)``) and Reptile (Nichol et al. 2018, ``resize((28, 28))``) produced,
because Pillow resizes 1-bit images with nearest-neighbour whatever filter is asked; the images
stay binary. ``"box"`` (area average) and ``"lanczos"`` resample the grayscale image instead.
Reading and checking the zips is ``tasks.omniglot_zip``.

Cache. Decoding a zip takes seconds, so its arrays are kept in ``cache_dir()/omniglot/`` as an
uncompressed ``.npz`` named after the zip, the resampling, and hashes of the zip's path and of
its size and mtime; a changed zip gets a new file (the stale one is removed). Files are written
to a temporary name and renamed, so a cache file is whole or absent.

Splits (``load_split``). ``protocol="standard"`` (both zips; Santoro et al. 2016, Finn et al.
2017, Nichol et al. 2018): the 1623 characters of both sets, shuffled with a seed, the first 1200
for meta-training ("train") and the other 423 for meta-testing ("test"); ``val_characters = v``
holds out the last v of the 1200 as "val" (Finn et al. use 100). ``protocol="alphabets"``
(background zip only, for development): the alphabets, shuffled with a seed, split by alphabet
into "test", "val" and "train" (round(n/6), round(n/6) and the rest: 5/5/20 of the 30
background alphabets). ``"background"`` and ``"evaluation"`` are every character of that zip.
``"auto"`` is "standard" when images_evaluation.zip is present, else "alphabets". A shuffle
orders names by SHA-256 of ``"<seed>:<name>"``, so a split depends on the seed and the names
only, never on a library's RNG or the order of a listing.

Rotations. Each character rotated by 0/90/180/270° counter-clockwise is a class of its own
(``with_rotations``): class 4c + r is character c rotated r·90°. By default meta-training
classes are rotated and meta-test classes are not, as in Nichol et al.; Finn et al. rotate both
(``rotate_test=True``).

Episodes. ``sample_episodes`` is pure MLX: the images live on the device as one uint8 array
(n_classes, 20, 28, 28) and an episode is a gather from it, so sampling runs under ``mx.vmap``
and inside ``mx.compile`` (a compiled function may close over the array: it is captured as a
constant).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple, Sequence

import mlx.core as mx
import numpy as np

from reptile_fn import datasets
from reptile_fn.episode import Episode, check_classes, sample_class_episodes
from reptile_fn.errors import ConfigError, DataError, check_choice, check_int
from reptile_fn.tasks import omniglot_zip
from reptile_fn.tasks.omniglot_zip import IMAGE_SIZE, N_DRAWERS, index_zip  # noqa: F401 (index_zip: the loader's API)
from reptile_fn.tasks.splits import group_split, shuffled

IN_DIM = (IMAGE_SIZE, IMAGE_SIZE, 1)
"""Episode images are NHWC: (…, 28, 28, 1) float32 in [0, 1], ink = 1."""
N_ROTATIONS = 4
RESAMPLE = ("nearest", "box", "lanczos")
PROTOCOLS = ("auto", "standard", "alphabets")
SPLITS = ("train", "val", "test", "background", "evaluation")
STANDARD_TRAIN_CHARACTERS = 1200
CACHE_VERSION = 1


class OmniglotSet(NamedTuple):
    """Decoded characters: ``images`` uint8 (n_characters, 20, 28, 28), ink = 255.

    ``characters[i]`` is ``"<Alphabet>/characterNN"`` and ``alphabets[i]`` its alphabet.
    """

    images: np.ndarray
    characters: tuple[str, ...]
    alphabets: tuple[str, ...]

    def subset(self, index: Sequence[int] | np.ndarray) -> OmniglotSet:
        index = np.asarray(index, dtype=np.int64)
        return OmniglotSet(self.images[index], tuple(self.characters[i] for i in index),
                           tuple(self.alphabets[i] for i in index))


def concatenate(*sets: OmniglotSet) -> OmniglotSet:
    return OmniglotSet(np.concatenate([s.images for s in sets]), sum((s.characters for s in sets), ()),
                       sum((s.alphabets for s in sets), ()))


# --- loading ------------------------------------------------------------------------------------

def zip_path(set_name: str = "background", data_dir: str | os.PathLike | None = None) -> Path:
    """Where ``images_<set_name>.zip`` is expected (see ``datasets.omniglot_dir``)."""
    return datasets.omniglot_dir(data_dir) / datasets.omniglot_zip_name(set_name)


def load_set(set_name: str = "background", data_dir: str | os.PathLike | None = None, *,
             resample: str = "nearest", cache: bool = True) -> OmniglotSet:
    """Every character of ``images_<set_name>.zip``, decoded (from the cache when it is current).

    Args:
      set_name: "background", "evaluation", "background_small1" or "background_small2".
      data_dir: the data root (else ``$REPTILE_FN_DATA``).
      resample: "nearest" (binary, as the reference code), "box" or "lanczos".
      cache: read and write the decoded arrays in ``cache_dir()``.
    """
    check_choice("resample", resample, RESAMPLE)
    path = zip_path(set_name, data_dir)
    if not path.is_file():
        root = datasets.data_dir(data_dir)
        if root.is_file():
            raise DataError(f"the data folder {root} is a file; give the folder that holds omniglot/ (--data-dir)")
        if path.exists():
            raise DataError(f"Omniglot file {path} is a folder or not a regular file; move it away and download the "
                            f"zip with `reptile-fn download omniglot --data-dir {root}`")
        raise DataError(
            f"Omniglot file {path} not found; download it with `reptile-fn download omniglot --data-dir {root}`"
            + ("" if set_name in ("background", "evaluation") else f" --sets {set_name}")
        )

    def decoded() -> dict[str, np.ndarray]:
        data = _decode_zip(path, set_name, resample)
        return {"images": data.images, "characters": np.array(data.characters, dtype=np.str_),
                "alphabets": np.array(data.alphabets, dtype=np.str_)}

    def valid(a: dict) -> bool:
        images = a["images"]
        return (images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (N_DRAWERS, IMAGE_SIZE, IMAGE_SIZE)
                and len(a["characters"]) == len(a["alphabets"]) == images.shape[0])

    arrays = datasets.cached_arrays(path, "omniglot", resample, decoded, valid=valid, version=CACHE_VERSION, use=cache)
    return OmniglotSet(arrays["images"], tuple(arrays["characters"].tolist()), tuple(arrays["alphabets"].tolist()))


def _decode_zip(path: Path, set_name: str, resample: str) -> OmniglotSet:
    return OmniglotSet(*omniglot_zip.decode_zip(path, set_name, resample))


def with_rotations(images: np.ndarray) -> np.ndarray:
    """(C, D, H, W) -> (4C, D, H, W): class 4c + r is class c rotated r·90° counter-clockwise."""
    return np.stack([np.rot90(images, r, axes=(-2, -1)) for r in range(N_ROTATIONS)], axis=1).reshape(
        -1, *images.shape[1:])


# --- splits -------------------------------------------------------------------------------------

def standard_split(characters: Sequence[str], *, seed: int = 0, val_characters: int = 0,
                   train_characters: int = STANDARD_TRAIN_CHARACTERS) -> dict[str, np.ndarray]:
    """Indices of "train" (1200 − v), "val" (v) and "test" (the rest) in a seeded shuffle of characters."""
    if not 0 <= val_characters < train_characters < len(characters):
        raise ConfigError(f"val_characters must be in 0..{train_characters - 1} and there must be more than "
                          f"{train_characters} characters (got {val_characters} and {len(characters)})")
    order = np.array(shuffled(characters, seed), dtype=np.int64)
    cut = train_characters - val_characters
    return {"train": np.sort(order[:cut]), "val": np.sort(order[cut:train_characters]),
            "test": np.sort(order[train_characters:])}


def alphabet_split(alphabets: Sequence[str], *, seed: int = 0) -> dict[str, np.ndarray]:
    """Character indices of "train", "val" and "test", split by alphabet (see the module docstring).

    ``alphabets[i]`` is character i's alphabet. With n alphabets, "test" and "val" get round(n/6)
    each (at least 1) and "train" the rest: 5/5/20 for the 30 background alphabets.
    """
    return group_split(alphabets, divisor=6, seed=seed, what="alphabet")


def resolve_protocol(protocol: str = "auto", data_dir: str | os.PathLike | None = None,
                     background: str = "background") -> str:
    """"standard" or "alphabets": "auto" is "standard" when the evaluation zip is present."""
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol != "auto":
        return protocol
    return "standard" if background == "background" and zip_path("evaluation", data_dir).is_file() else "alphabets"


def load_split(split: str, data_dir: str | os.PathLike | None = None, *, protocol: str = "auto", seed: int = 0,
               val_characters: int = 0, background: str = "background", resample: str = "nearest",
               cache: bool = True) -> OmniglotSet:
    """The characters of one split ("train", "val", "test", "background" or "evaluation"), unrotated.

    Args:
      protocol: "standard" (needs both zips), "alphabets" (the background zip only) or "auto".
      seed: the seed of the split's shuffle.
      val_characters: "standard" only: characters of the 1200 held out as "val" (Finn et al.: 100).
      background: which background zip, e.g. "background_small1" for quick development.
    """
    check_choice("split", split, SPLITS)
    load = dict(data_dir=data_dir, resample=resample, cache=cache)
    if split == "evaluation":
        return load_set("evaluation", **load)
    if split == "background":
        return load_set(background, **load)
    protocol = resolve_protocol(protocol, data_dir, background)
    if protocol == "standard":
        if background != "background":
            raise ConfigError(f"the standard protocol uses the full background set, not {background!r}; "
                              "use protocol='alphabets' with a small background set")
        if split == "val" and val_characters == 0:
            raise ConfigError("the standard protocol has no meta-validation split unless val_characters > 0 "
                              "(Finn et al. hold out 100 of the 1200 training characters)")
        everything = concatenate(load_set("background", **load), load_set("evaluation", **load))
        index = standard_split(everything.characters, seed=seed, val_characters=val_characters,
                               train_characters=STANDARD_TRAIN_CHARACTERS)
    else:
        everything = load_set(background, **load)
        index = alphabet_split(everything.alphabets, seed=seed)
    return everything.subset(index[split])


# --- episodes -----------------------------------------------------------------------------------

def decode(images: mx.array) -> mx.array:
    """uint8 drawings (..., 28, 28), ink = 255, to episode inputs: float32 (..., 28, 28, 1) in [0, 1]."""
    return (images.astype(mx.float32) * (1.0 / 255.0))[..., None]


def sample_episodes(images: mx.array, key: mx.array, n_tasks: int, *, n_way: int, k_shot: int,
                    query_size: int) -> Episode:
    """n_tasks N-way K-shot episodes from ``images`` uint8 (n_classes, n_drawers, 28, 28), stacked on a task
    axis (``episode.sample_class_episodes``); episode i uses ``split(key, n_tasks)[i]``."""
    return sample_class_episodes(images, key, n_tasks, n_way=n_way, k_shot=k_shot, query_size=query_size,
                                 decode=decode)


@dataclass(frozen=True, eq=False)
class OmniglotTasks:
    """N-way K-shot Omniglot episodes: the TaskDistribution interface used by the training loop.

    ``train_images`` / ``test_images``: uint8 (n_classes, 20, 28, 28) on the device, one row per
    class (rotations already expanded). ``sample_train`` draws from the first, ``sample_test``
    from the second; both are pure in their key, vmap- and compile-safe.
    """

    train_images: mx.array
    test_images: mx.array
    n_way: int
    k_shot: int
    query_size: int
    train_split: str = "train"
    test_split: str = "test"
    protocol: str = "standard"
    test_alphabets: tuple[str, ...] = ()  # the alphabet of each row of test_images (empty: not recorded)

    kind: ClassVar[str] = "classification"
    in_dim: ClassVar[tuple[int, int, int]] = IN_DIM

    def __post_init__(self) -> None:
        check_int("n_way", self.n_way, 1, "classes per episode")
        check_int("k_shot", self.k_shot, 1, "support examples per class")
        check_int("query_size", self.query_size, 1, "query examples per class")
        for name in ("n_way", "k_shot", "query_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("train_images", "test_images"):
            images = getattr(self, name)
            if images.ndim != 4 or tuple(images.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
                raise ConfigError(f"{name} must be (n_classes, n_drawers, 28, 28), got {tuple(images.shape)}")
            split = self.train_split if name == "train_images" else self.test_split
            check_classes(f"the {split!r} split", images.shape[0], images.shape[1], n_way=self.n_way,
                          k_shot=self.k_shot, query_size=self.query_size, unit="drawings")
        object.__setattr__(self, "test_alphabets", tuple(self.test_alphabets))
        if self.test_alphabets and len(self.test_alphabets) != self.test_images.shape[0]:
            raise ConfigError(f"test_alphabets names {len(self.test_alphabets)} alphabets for "
                              f"{self.test_images.shape[0]} test classes; give one per row of test_images")

    @property
    def out_dim(self) -> int:
        """The number of classes per episode (n_way)."""
        return self.n_way

    def sample_train(self, key: mx.array, n_tasks: int) -> Episode:
        """n_tasks meta-training episodes (from ``train_images``)."""
        return sample_episodes(self.train_images, key, n_tasks, n_way=self.n_way, k_shot=self.k_shot,
                               query_size=self.query_size)

    def sample_test(self, key: mx.array, n_tasks: int) -> Episode:
        """n_tasks held-out episodes (from ``test_images``: the split chosen at construction)."""
        return sample_episodes(self.test_images, key, n_tasks, n_way=self.n_way, k_shot=self.k_shot,
                               query_size=self.query_size)


def make_omniglot(data_dir: str | os.PathLike | None = None, *, n_way: int = 5, k_shot: int = 1,
                  query_size: int = 15, train_split: str = "train", test_split: str = "test",
                  protocol: str = "auto", seed: int = 0, val_characters: int = 0,
                  background: str = "background", rotate_train: bool = True, rotate_test: bool = False,
                  resample: str = "nearest", cache: bool = True) -> OmniglotTasks:
    """An Omniglot episode sampler: ``train_split`` for ``sample_train``, ``test_split`` for ``sample_test``.

    Splits, protocols and rotations are described in the module docstring; ``seed`` is the
    split's seed (not the sampling key). ``rotate_train`` / ``rotate_test`` make each character's
    four rotations separate classes of that split.
    """
    check_choice("train_split", train_split, SPLITS)
    check_choice("test_split", test_split, SPLITS)
    resolved = resolve_protocol(protocol, data_dir, background)
    if resolved == "standard" and train_split == "train" and test_split in ("evaluation", "background"):
        raise ConfigError(f"test_split = {test_split} under the standard protocol: its meta-training characters are "
                          f"drawn from both zips, so most of the {test_split} set was trained on; use test (the "
                          f"held-out characters), or meta-train with protocol = alphabets (the background zip's "
                          f"alphabets only) to score on the evaluation alphabets")
    if resolved == "standard" and "val" in (train_split, test_split) and val_characters == 0:
        raise ConfigError("test_split = val under the standard protocol, which holds out no validation characters "
                          "(val_characters = 0, as the paper); use test, or protocol = alphabets (its split by alphabet "
                          "has validation alphabets)")
    load = dict(data_dir=data_dir, protocol=resolved, seed=seed, val_characters=val_characters,
                background=background, resample=resample, cache=cache)

    def device_images(split: str, rotate: bool) -> tuple[mx.array, tuple[str, ...]]:
        chars = load_split(split, **load)
        alphabets = tuple(a for a in chars.alphabets for _ in range(N_ROTATIONS if rotate else 1))  # 4c + r
        return mx.array(with_rotations(chars.images) if rotate else chars.images), alphabets

    train, _ = device_images(train_split, rotate_train)
    test, test_alphabets = device_images(test_split, rotate_test)
    mx.eval(train, test)
    return OmniglotTasks(train, test, n_way, k_shot, query_size, train_split, test_split, resolved, test_alphabets)

