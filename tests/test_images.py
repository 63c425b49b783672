"""A user's own images as few-shot tasks (``tasks.images``): layouts, modes and resizing, the flat storage,
splits, episodes, the cache, and one clear DataError for every kind of bad data.

Every data set is built here in ``tmp_path``: small noise images (so each is unique after resizing) of mixed
sizes, formats and modes, with uneven class sizes; the cache goes to ``tmp_path/cache``.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

from reptile_fn import datasets
from reptile_fn.episode import sample_class_episodes
from reptile_fn.errors import ConfigError, DataError
from reptile_fn.tasks import images as I

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

SIZES = [(20, 30), (64, 64), (100, 80), (33, 17)]
FORMATS = [("png", "PNG"), ("jpg", "JPEG"), ("PNG", "PNG"), ("bmp", "BMP"), ("jpeg", "JPEG"), ("webp", "WEBP"),
           ("gif", "GIF")]
# class -> number of images: uneven, one large class
ONE_LEVEL = {"ant": 6, "bee": 9, "cat": 15, "dog": 7, "eel": 6, "fox": 8, "gnu": 6, "hen": 10, "yak": 7}
TWO_LEVEL = {"a/x": 6, "a/y": 7, "a-b/z": 6, "b/p": 8, "b/q": 6, "c/r": 9, "c/s": 6, "d/t": 7, "d/u": 6}


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No test reads the user's data root or writes the user's cache."""
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))


def noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")


def image_bytes(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def write_set(root: Path, spec: dict[str, int], *, colour: bool = True, seed: int = 0) -> Path:
    """Class folders ``spec`` (relative path -> number of images) of noise images in mixed formats and sizes;
    with ``colour`` every third image is RGB, else all are grayscale."""
    i = seed * 1000
    for cls, n in spec.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            ext, fmt = FORMATS[i % len(FORMATS)]
            mode = "RGB" if colour and i % 3 == 0 else "L"
            (root / cls / f"img{j:02d}.{ext}").write_bytes(image_bytes(noise(mode, SIZES[i % len(SIZES)], i), fmt))
            i += 1
    return root


def zip_folder(folder: Path, path: Path, top: str | None = None, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                rel = f.relative_to(folder).as_posix()
                z.write(f, f"{top}/{rel}" if top else rel)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def cache_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "images"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` × ``height`` 8-bit gray pixels, with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def one_level(tmp_path) -> Path:
    return write_set(tmp_path / "animals", ONE_LEVEL)


# --- loading ------------------------------------------------------------------------------------

def test_one_level_folder_shapes_order_counts_and_offsets(one_level):
    data = I.load_images(one_level, image_size=16)
    n = sum(ONE_LEVEL.values())
    assert data.images.shape == (n, 16, 16, 3) and data.images.dtype == np.uint8 and data.channels == 3
    assert data.classes == tuple(sorted(ONE_LEVEL)) == data.groups and not data.grouped
    assert data.counts.tolist() == [ONE_LEVEL[c] for c in data.classes] and data.counts.dtype == np.int32
    assert data.offsets.tolist() == np.concatenate([[0], np.cumsum(data.counts)[:-1]]).tolist()
    assert data.offsets.dtype == np.int32
    # class "cat", image 3 is the stored row offsets[cat] + 3, equal to decoding that file by hand (BOX)
    c = data.classes.index("cat")
    name = sorted(p.name for p in (one_level / "cat").iterdir())[3]
    with Image.open(one_level / "cat" / name) as im:
        expected = np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BOX))
    np.testing.assert_array_equal(data.images[data.offsets[c] + 3], expected)


def test_all_gray_is_one_channel_and_any_colour_makes_three(tmp_path):
    # the gray set holds every format: a gray GIF decodes as a palette and a gray WebP as RGB, yet both are gray
    gray = I.load_images(write_set(tmp_path / "gray", {"a": 3, "b": 4}, colour=False), image_size=12)
    assert gray.images.shape == (7, 12, 12, 1) and gray.channels == 1
    root = write_set(tmp_path / "mixed", {"a": 3, "b": 4}, colour=False)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "b" / "red.png")
    mixed = I.load_images(root, image_size=12)
    assert mixed.images.shape == (8, 12, 12, 3)
    b = mixed.classes.index("b")
    np.testing.assert_array_equal(mixed.images[mixed.offsets[b] + 4], np.full((12, 12, 3), (200, 10, 10)))
    # a grayscale image in a colour set is its gray level on all three channels
    first = mixed.images[0]
    assert (first[..., 0] == first[..., 1]).all() and (first[..., 1] == first[..., 2]).all()
    np.testing.assert_array_equal(first[..., 0], gray.images[0, ..., 0])


def test_gray_modes_alpha_and_sixteen_bits(tmp_path):
    root = tmp_path / "modes"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    Image.new("1", (30, 20), 1).save(root / "a" / "1-bit.png")  # white
    Image.fromarray(np.full((20, 20), 100 * 257, np.uint16)).save(root / "a" / "16-bit.png")  # I;16: 100 of 255
    Image.new("LA", (25, 25), (0, 0)).save(root / "b" / "clear.png")  # black but fully transparent: white
    Image.new("LA", (25, 25), (40, 255)).save(root / "b" / "opaque.png")
    with Image.open(root / "a" / "16-bit.png") as im:
        assert im.mode.startswith("I")
    data = I.load_images(root, image_size=8)
    assert data.channels == 1
    assert [int(im.mean()) for im in data.images] == [255, 100, 255, 40]
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(root / "b" / "y-clear-red.png")  # white, so still gray
    assert I.load_images(root, image_size=8).channels == 1
    Image.new("RGBA", (10, 10), (255, 0, 0, 128)).save(root / "b" / "z-half-red.png")  # pink: colour
    data = I.load_images(root, image_size=8)
    assert data.channels == 3 and (data.images[-2] == 255).all() and (data.images[0] == 255).all()
    assert data.images[-1, 0, 0].tolist() in ([255, 127, 127], [255, 128, 128])
    assert (data.images[-3] == 40).all()  # a gray image in a colour set: its level on all three channels


def test_exif_orientation_is_applied(tmp_path):
    root = write_set(tmp_path / "set", {"a": 2, "b": 2}, colour=False)
    im = Image.fromarray(np.hstack([np.zeros((40, 20), np.uint8), np.full((40, 20), 255, np.uint8)]))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise: the black left half goes to the top
    im.save(root / "b" / "z-rotated.jpg", quality=95, exif=exif)
    data = I.load_images(root, image_size=8)
    rotated = data.images[-1, ..., 0].astype(int)
    assert rotated[:3].mean() < 30 and rotated[-3:].mean() > 225


def test_two_levels_name_classes_group_slash_class_sorted_by_group_then_class(tmp_path):
    data = I.load_images(write_set(tmp_path / "scripts", TWO_LEVEL), image_size=10)
    # ("a", "y") sorts before ("a-b", "z") although the string "a-b/z" < "a/y"
    assert data.classes == ("a/x", "a/y", "a-b/z", "b/p", "b/q", "c/r", "c/s", "d/t", "d/u")
    assert data.groups == ("a", "a", "a-b", "b", "b", "c", "c", "d", "d") and data.grouped
    assert data.counts.tolist() == [TWO_LEVEL[c] for c in data.classes]


def test_images_within_a_class_are_sorted_by_file_name(tmp_path):
    root = tmp_path / "set"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    for name, level in (("z.png", 10), ("B.png", 20), ("a.png", 30), ("m.jpg", 40)):
        Image.new("L", (9, 9), level).save(root / "a" / name)
        Image.new("L", (9, 9), level).save(root / "b" / name)
    data = I.load_images(root, image_size=4)
    assert [int(round(im.mean())) for im in data.images[:4]] == [20, 30, 40, 10]  # B.png a.png m.jpg z.png


@pytest.mark.parametrize("top", [None, "images_background"])
def test_a_zip_gives_the_same_arrays_as_its_folder(tmp_path, one_level, top):
    folder = I.load_images(one_level, image_size=12)
    extra = {"__MACOSX/cat/._img00.png": b"junk", ".DS_Store": b"junk", "cat/.hidden.png": b"junk",
             "README.txt": b"hello"}
    z = zip_folder(one_level, tmp_path / "animals.ZIP", top, extra)
    zipped = I.load_images(z, image_size=12)
    assert zipped.classes == folder.classes and zipped.groups == folder.groups
    for a, b in zip(zipped, folder):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_two_level_zip_and_one_top_folder(tmp_path):
    root = write_set(tmp_path / "scripts", TWO_LEVEL, seed=1)
    folder = I.load_images(root, image_size=10)
    for top in (None, "images_background"):
        zipped = I.load_images(zip_folder(root, tmp_path / f"{top}.zip", top), image_size=10)
        assert zipped.classes == folder.classes and zipped.groups == folder.groups
        np.testing.assert_array_equal(zipped.images, folder.images)
    # a folder holding the unzipped copy (one top folder) reads the same
    nested = write_set(tmp_path / "outer" / "images_background", TWO_LEVEL, seed=1).parent
    assert I.load_images(nested, image_size=10).classes == folder.classes


def test_hidden_files_and_other_files_are_ignored(one_level):
    (one_level / ".git").mkdir()
    (one_level / ".git" / "x.png").write_bytes(b"not an image")
    (one_level / "cat" / ".thumb.png").write_bytes(b"not an image")
    (one_level / "cat" / "notes.txt").write_text("notes")
    (one_level / "labels.csv").write_text("a,b")
    data = I.load_images(one_level, image_size=8)
    assert data.classes == tuple(sorted(ONE_LEVEL)) and len(data.images) == sum(ONE_LEVEL.values())


def test_subset_keeps_the_flat_layout(one_level):
    data = I.load_images(one_level, image_size=8)
    part = data.subset([5, 2])
    assert part.classes == (data.classes[5], data.classes[2]) and part.counts.tolist() == [data.counts[5], data.counts[2]]
    assert part.offsets.tolist() == [0, data.counts[5]]
    np.testing.assert_array_equal(part.images[part.offsets[1]:], data.images[data.offsets[2]:data.offsets[2] + data.counts[2]])
    assert part.images.shape == (data.counts[5] + data.counts[2], 8, 8, 3) and part.channels == 3


# --- splits -------------------------------------------------------------------------------------

def test_class_splits_are_disjoint_cover_everything_and_follow_the_seed(one_level):
    data = I.load_images(one_level, image_size=8)
    split = I.split_images(data, seed=0, val=0.2, test=0.2)
    parts = [set(split[s].tolist()) for s in ("train", "val", "test")]
    assert set.union(*parts) == set(range(len(data.classes))) and sum(map(len, parts)) == len(data.classes)
    assert [len(p) for p in parts] == [5, 2, 2]
    assert split["all"].tolist() == list(range(len(data.classes)))
    assert I.split_images(data, seed=0)["test"].tolist() == split["test"].tolist()
    others = {tuple(I.split_images(data, seed=s)["test"].tolist()) for s in range(1, 6)}
    assert others - {tuple(split["test"].tolist())}
    assert len(I.split_images(data, val=0.0)["val"]) == 0


def test_group_splits_hold_whole_groups_out(tmp_path):
    data = I.load_images(write_set(tmp_path / "scripts", TWO_LEVEL), image_size=8)
    seen = set()
    for seed in range(6):
        split = I.split_images(data, seed=seed, val=0.2, test=0.2)
        groups = {s: {data.groups[i] for i in split[s]} for s in ("train", "val", "test")}
        assert [len(groups[s]) for s in ("train", "val", "test")] == [3, 1, 1]
        assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
        for s in ("train", "val", "test"):  # every class of a held-out group goes with it
            assert {i for i, g in enumerate(data.groups) if g in groups[s]} == set(split[s].tolist())
        seen.add(tuple(sorted(groups["test"])))
    assert len(seen) > 1


def test_bad_fractions_image_size_and_too_few_classes(tmp_path, one_level):
    with pytest.raises(ConfigError, match="image_size must be an integer >= 1"):
        I.load_images(one_level, image_size=0)
    data = I.load_images(one_level, image_size=8)
    for val, test in ((0.5, 0.5), (-0.1, 0.2), (0.2, 0.0)):
        with pytest.raises(ConfigError, match="held-out fractions"):
            I.split_images(data, val=val, test=test)
    small = I.load_images(write_set(tmp_path / "two", {"a": 2, "b": 2}), image_size=8)
    with pytest.raises(DataError, match="found 2"):
        I.split_images(small)


# --- episodes -----------------------------------------------------------------------------------

@pytest.fixture
def tasks(one_level) -> I.ImageTasks:
    return I.make_image_tasks(one_level, n_way=3, k_shot=2, query_size=3, image_size=12, train_split="all",
                              val=0.0, test=0.4)


def class_of_rows(images: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> dict[bytes, tuple[int, int]]:
    """Each stored image's bytes -> (class, row)."""
    out = {}
    for c, (o, n) in enumerate(zip(offsets.tolist(), counts.tolist())):
        for r in range(o, o + n):
            out[images[r].tobytes()] = (c, r)
    assert len(out) == len(images), "test images must be unique"
    return out


def test_episodes_are_real_images_of_the_right_classes(tasks):
    stored = np.array(tasks.train_images)
    lookup = class_of_rows(stored, np.array(tasks.train_offsets), np.array(tasks.train_counts))
    batch = tasks.sample_train(mx.random.key(3), 16)
    assert batch.support_x.shape == (16, 6, 12, 12, 3) and batch.query_x.shape == (16, 9, 12, 12, 3)
    assert batch.support_x.dtype == mx.float32 and tasks.in_dim == (12, 12, 3) and tasks.out_dim == 3
    for t in range(16):
        xs = np.concatenate([np.array(batch.support_x[t]), np.array(batch.query_x[t])])
        ys = np.concatenate([np.array(batch.support_y[t]), np.array(batch.query_y[t])])
        assert 0.0 <= xs.min() and xs.max() <= 1.0
        found = [lookup[np.rint(x * 255).astype(np.uint8).tobytes()] for x in xs]
        rows = [r for _, r in found]
        assert len(set(rows)) == len(rows), "support and query examples are distinct"
        by_label = {label: {c for (c, _), y in zip(found, ys) if y == label} for label in range(3)}
        assert all(len(v) == 1 for v in by_label.values()) and len(set.union(*by_label.values())) == 3
    assert np.array(batch.support_y[0]).tolist() == [0, 0, 1, 1, 2, 2]


def test_a_large_class_is_sampled_beyond_the_smaller_counts(tasks):
    stored = np.array(tasks.train_images)
    counts, offsets = np.array(tasks.train_counts), np.array(tasks.train_offsets)
    lookup = class_of_rows(stored, offsets, counts)
    big = int(np.argmax(counts))
    assert counts[big] == 15 and tasks.train_n_max == 15
    batch = tasks.sample_train(mx.random.key(0), 200)
    xs = np.rint(np.array(batch.query_x).reshape(-1, 12, 12, 3) * 255).astype(np.uint8)
    used = {lookup[x.tobytes()][1] - offsets[big] for x in xs if lookup[x.tobytes()][0] == big}
    assert used == set(range(15))


def test_sampling_is_pure_in_the_key_and_compiles(tasks):
    key = mx.random.key(11)
    a, b = tasks.sample_test(key, 4), tasks.sample_test(key, 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.array(x), np.array(y))
    assert not np.array_equal(np.array(a.support_x), np.array(tasks.sample_test(mx.random.key(12), 4).support_x))
    compiled = mx.compile(lambda k: tasks.sample_train(k, 4))(key)
    for x, y in zip(compiled, tasks.sample_train(key, 4)):
        np.testing.assert_array_equal(np.array(x), np.array(y))

    @mx.compile
    def step(w, k):
        batch = tasks.sample_train(k, 4)
        return w + batch.support_x.mean() + batch.query_y.sum()

    eager = tasks.sample_train(key, 4)
    assert abs(float(step(mx.array(0.0), key)) - (float(eager.support_x.mean()) + float(eager.query_y.sum()))) < 1e-4
    # the data passed as arguments, and the sampler under vmap
    passed = mx.compile(lambda x, c, o, k: sample_class_episodes(x, k, 4, n_way=3, k_shot=2, query_size=3, counts=c,
                                                                 offsets=o, n_max=tasks.train_n_max, decode=I.decode))
    got = passed(tasks.train_images, tasks.train_counts, tasks.train_offsets, key)
    np.testing.assert_array_equal(np.array(got.query_x), np.array(eager.query_x))
    keys = mx.random.split(key, 3)
    vmapped = mx.vmap(lambda k: tasks.sample_train(k, 2))(keys)
    assert vmapped.support_x.shape == (3, 2, 6, 12, 12, 3)
    np.testing.assert_array_equal(np.array(vmapped.support_x[1]), np.array(tasks.sample_train(keys[1], 2).support_x))


def test_splits_of_the_sampler(tmp_path, one_level):
    index = I.split_images(I.load_images(one_level, image_size=12))
    names = tuple(sorted(ONE_LEVEL))
    t = I.make_image_tasks(one_level, n_way=2, k_shot=1, query_size=2, image_size=12, test_split="val")
    assert t.train_classes == tuple(names[i] for i in index["train"]) and t.test_split == "val"
    assert t.test_classes == tuple(names[i] for i in index["val"])
    t = I.make_image_tasks(one_level, n_way=2, k_shot=1, query_size=2, image_size=12, test_split="all")
    assert t.test_classes == names and t.test_images.shape[0] == sum(ONE_LEVEL.values())
    two = write_set(tmp_path / "two", {"a": 3, "b": 4})  # too few classes to split, enough to score on
    t = I.make_image_tasks(two, n_way=2, k_shot=1, query_size=2, image_size=8, train_split="all", test_split="all")
    assert t.train_classes == t.test_classes == ("a", "b") and t.sample_test(mx.random.key(0), 3).query_y.shape == (3, 4)
    with pytest.raises(DataError, match="found 2"):
        I.make_image_tasks(two, n_way=2, k_shot=1, query_size=2, image_size=8, test_split="all")
    gray = I.make_image_tasks(write_set(tmp_path / "gray", ONE_LEVEL, colour=False), n_way=2, k_shot=1,
                              query_size=1, image_size=10)
    assert gray.in_dim == (10, 10, 1) and gray.sample_train(mx.random.key(0), 2).query_x.shape == (2, 2, 10, 10, 1)


def test_the_sampler_validates_its_sizes(one_level):
    make = dict(image_size=8, train_split="all")
    with pytest.raises(ConfigError, match=r"k_shot \+ query_size = 8 .*'all' split.*smallest class is 'ant' \(6 images\)"):
        I.make_image_tasks(one_level, k_shot=3, query_size=5, **make)
    with pytest.raises(ConfigError, match="n_way = 9 but the 'test' split has only 2 classes"):
        I.make_image_tasks(one_level, n_way=9, **make)
    with pytest.raises(ConfigError, match="k_shot must be an integer >= 1"):
        I.make_image_tasks(one_level, k_shot=0, **make)
    with pytest.raises(ConfigError, match="train_split must be one of train, all"):
        I.make_image_tasks(one_level, train_split="val")
    with pytest.raises(ConfigError, match="test_split must be one of"):
        I.make_image_tasks(one_level, test_split="train")
    with pytest.raises(ConfigError, match="'val' split .* is empty"):
        I.make_image_tasks(one_level, test_split="val", val=0.0, n_way=2, **make)


# --- the cache ----------------------------------------------------------------------------------

def test_the_cache_is_used_then_rebuilt_when_a_file_changes(tmp_path, one_level, monkeypatch):
    first = I.load_images(one_level, image_size=12)
    assert len(cache_files(tmp_path)) == 1 and cache_files(tmp_path)[0].startswith("animals-12px-")
    real = I.read_classes

    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the cache is current")

    monkeypatch.setattr(I, "read_classes", refuse)
    again = I.load_images(one_level, image_size=12)
    np.testing.assert_array_equal(again.images, first.images)
    assert again.classes == first.classes and again.channels == 3
    with pytest.raises(AssertionError):  # another image size is another cache file
        I.load_images(one_level, image_size=10)
    with pytest.raises(AssertionError):  # and cache=False never reads it
        I.load_images(one_level, image_size=12, cache=False)

    files = sorted((one_level / "cat").iterdir())
    index = next(i for i, f in enumerate(files) if f.suffix.lower() == ".png")
    Image.new("L", (30, 30), 7).save(files[index])  # replace one image
    calls = []
    monkeypatch.setattr(I, "read_classes", lambda *a, **k: calls.append(1) or real(*a, **k))
    changed = I.load_images(one_level, image_size=12)
    assert calls and (changed.images[changed.offsets[2] + index] == 7).all()
    assert len(cache_files(tmp_path)) == 1  # the stale file is gone
    Image.new("L", (30, 30), 9).save(one_level / "cat" / "img99.png")  # add one
    assert I.load_images(one_level, image_size=12).counts[2] == 16 and len(calls) == 2


def test_a_zip_is_cached_on_its_size_and_mtime(tmp_path, one_level, monkeypatch):
    z = zip_folder(one_level, tmp_path / "animals.zip")
    first = I.load_images(z, image_size=8)
    monkeypatch.setattr(I, "read_classes", lambda *a, **k: pytest.fail("decoded although the cache is current"))
    np.testing.assert_array_equal(I.load_images(z, image_size=8).images, first.images)
    os.utime(z, ns=(1, 1))
    with pytest.raises(pytest.fail.Exception):
        I.load_images(z, image_size=8)


def test_cached_arrays_with_a_fingerprint(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    built = []

    def build():
        built.append(1)
        return {"x": np.arange(3)}

    def load(fingerprint):
        return datasets.cached_arrays(folder, "k", "t", build, valid=lambda a: "x" in a, version=1,
                                      fingerprint=fingerprint)

    assert load("one")["x"].tolist() == [0, 1, 2] and load("one")["x"].tolist() == [0, 1, 2] and len(built) == 1
    load("two")
    assert len(built) == 2 and len(list((tmp_path / "cache" / "k").iterdir())) == 1


# --- bad data -----------------------------------------------------------------------------------

def corrupt_member_zip(tmp_path: Path) -> Path:
    root = write_set(tmp_path / "set", {"a": 3, "b": 3}, colour=False)
    z = zip_folder(root, tmp_path / "crc.zip")
    raw = bytearray(z.read_bytes())
    info = zipfile.ZipFile(z).getinfo("b/img00.bmp")
    raw[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF  # BMP data are stored: a bad CRC
    z.write_bytes(bytes(raw))
    return z


def bad_case(name: str, tmp_path: Path) -> Path:  # noqa: C901 - one branch per case
    ok = {"a": 3, "b": 3}
    if name == "missing":
        return tmp_path / "nowhere"
    if name == "empty":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if name == "not a zip":
        (tmp_path / "data.tar").write_bytes(b"x")
        return tmp_path / "data.tar"
    if name == "corrupt zip":
        (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 this is no zip")
        return tmp_path / "bad.zip"
    if name == "truncated zip":
        z = zip_folder(write_set(tmp_path / "set", ok), tmp_path / "cut.zip")
        z.write_bytes(z.read_bytes()[:-40])
        return z
    if name == "bad crc":
        return corrupt_member_zip(tmp_path)
    if name == "unsafe member":
        z = zip_folder(write_set(tmp_path / "set", ok), tmp_path / "slip.zip", extra={"../evil/x.png": b"x"})
        return z
    if name == "control character in a zip":  # printed in adapt's summary: an escape sequence reached the terminal
        return zip_folder(write_set(tmp_path / "set", ok), tmp_path / "esc.zip",
                          extra={"evil\x1b[2J/x.png": image_bytes(noise("L", (8, 8), 1), "PNG")})
    if name == "member twice":  # zip -u appended: the last copy was read twice, the first never
        return zip_folder(write_set(tmp_path / "set", ok), tmp_path / "dup.zip",
                          extra={"a/img00.png": image_bytes(noise("L", (8, 8), 2), "PNG")})
    root = write_set(tmp_path / "set", ok, colour=False)
    if name == "only other files":
        for c in ok:
            for f in (root / c).iterdir():
                f.rename(f.with_suffix(".tiff"))
    elif name == "images in the root":
        Image.new("L", (8, 8)).save(root / "loose.png")
    elif name == "single class":
        for f in (root / "b").iterdir():
            f.unlink()
        (root / "b").rmdir()
    elif name == "mixed layout":
        (root / "g" / "c").mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / "g" / "c" / "deep.png")
    elif name == "too deep":
        (root / "a" / "b" / "c").mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / "a" / "b" / "c" / "deeper.png")
    elif name == "empty class":
        (root / "empty_class").mkdir()
    elif name == "class of other files":
        (root / "notes").mkdir()
        (root / "notes" / "readme.txt").write_text("hi")
    elif name == "not an image":
        (root / "b" / "fake.png").write_text("I am text")
    elif name == "truncated png":
        data = image_bytes(noise("L", (40, 40), 1), "PNG")
        (root / "b" / "cut.png").write_bytes(data[: len(data) // 2])
    elif name == "truncated jpeg":
        data = image_bytes(noise("RGB", (64, 64), 1), "JPEG")
        (root / "b" / "cut.jpg").write_bytes(data[: len(data) // 2])
    elif name == "broken link":
        os.symlink(root / "nowhere.png", root / "b" / "link.png")
    elif name in ("bomb", "bomb above pillow's warning"):
        side = 20000 if name == "bomb" else 10000  # 400 M pixels (Pillow refuses too) or 100 M (Pillow only warns)
        (root / "b" / "bomb.png").write_bytes(png_header(side, side))
    return root


BAD = {
    "missing": r"nowhere not found",
    "empty": r"no images .* in .*empty",
    "not a zip": r"data.tar is a file but not a \.zip",
    "corrupt zip": r"bad.zip is not a readable zip",
    "truncated zip": r"cut.zip is not a readable zip",
    "bad crc": r"cannot read the image 'b/img00.bmp' in .*crc.zip",
    "unsafe member": r"unsafe member name '\.\./evil/x\.png'",
    "control character in a zip": r"esc.zip holds a member name with a control character .*'evil\\x1b\[2J/x\.png'",
    "member twice": r"dup.zip holds 'a/img00.png' twice",
    "only other files": r"no images .* found 6 other files, e.g. 'a/img00\.tiff'",
    "images in the root": r"'loose.png' in .* is not in a class folder",
    "single class": r"one class only \('a'\)",
    "mixed layout": r"mixes layouts: 'a/img00.png' is <class>/<image> but 'g/c/deep.png' is <group>/<class>/<image>",
    "too deep": r"'a/b/c/deeper.png' .* is nested too deep",
    "empty class": r"class folder 'empty_class' .* holds no images",
    "class of other files": r"class folder 'notes' .* holds no images",
    "not an image": r"cannot read the image .*b/fake\.png \(not an image Pillow can read\)",
    "truncated png": r"cannot read the image .*b/cut\.png",
    "truncated jpeg": r"cannot read the image .*b/cut\.jpg",
    "broken link": r"cannot read .*b/link\.png \(No such file",
    "bomb": r"b/bomb\.png is too large",
    "bomb above pillow's warning": r"b/bomb\.png is too large to decode safely: its header claims 10000×10000 pixels",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_one_clear_error_and_writes_nothing(tmp_path, case):
    path = bad_case(case, tmp_path)
    with pytest.raises(DataError, match=BAD[case]):
        I.load_images(path, image_size=8)
    assert cache_files(tmp_path) == []


def test_an_empty_group_folder(tmp_path):
    root = write_set(tmp_path / "scripts", TWO_LEVEL)
    (root / "e").mkdir()
    with pytest.raises(DataError, match="group folder 'e'"):
        I.load_images(root)
    (root / "e" / "empty_class").mkdir()
    with pytest.raises(DataError, match="class folder 'e/empty_class'"):
        I.load_images(root)


def test_a_bomb_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    root = write_set(tmp_path / "set", {"a": 3, "b": 3})
    (root / "a" / "0-bomb.png").write_bytes(png_header(10000, 10000))  # the first file decoded
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # even with Pillow's own check off
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded the bomb"))
    with pytest.raises(DataError, match="too large"):
        I.load_images(root, image_size=8)


def test_a_pipe_among_the_images_or_as_the_zip_is_refused_not_waited_on(tmp_path):
    import os

    from reptile_fn.errors import DataError
    from reptile_fn.tasks import image_files

    (tmp_path / "data" / "cat").mkdir(parents=True)
    os.mkfifo(tmp_path / "data" / "cat" / "x.png")
    with pytest.raises(DataError, match="not a regular file"):
        image_files.has_class_folders(tmp_path / "data")
    os.mkfifo(tmp_path / "pipe.zip")
    with pytest.raises(DataError, match="not a regular file"):
        image_files.has_class_folders(tmp_path / "pipe.zip")


def test_linked_class_folders_are_classes_and_a_link_back_is_refused(tmp_path, one_level):
    """A class folder that is a symlink is read like any other (os.walk skipped it, so the class vanished); a link
    to a folder already read (one class twice, or a loop) is refused rather than counted twice or followed forever."""
    linked = tmp_path / "linked"
    linked.mkdir()
    for c in ONE_LEVEL:
        os.symlink(one_level / c, linked / c)
    assert I.load_images(linked, image_size=16).counts.tolist() == I.load_images(one_level, image_size=16).counts.tolist()
    os.symlink(one_level / "cat", one_level / "cat_again")
    with pytest.raises(DataError, match="cat_again is a link to .*cat, which is read already"):
        I.load_images(one_level, image_size=16)
    (one_level / "cat_again").unlink()
    os.symlink(one_level, one_level / "cat" / "loop")
    with pytest.raises(DataError, match="loop is a link to"):
        I.load_images(one_level, image_size=16)


def test_too_few_classes_or_images_name_the_setting_and_a_value_that_fits():
    from reptile_fn.episode import check_classes

    with pytest.raises(ConfigError, match=r"only 3 classes; lower tasks.n_way \(--set tasks.n_way=3\)"):
        check_classes("the 'all' split", 3, 10, n_way=5, k_shot=1, query_size=1)
    with pytest.raises(ConfigError, match=r"only 4 images; .* tasks.query_size \(e.g. --set tasks.query_size=3\)"):
        check_classes("the 'all' split", 6, 4, n_way=5, k_shot=1, query_size=5, unit="images")
    with pytest.raises(ConfigError) as one:  # was "only 1 classe; lower tasks.n_way", which no n_way fixes
        check_classes("the 'test' split", 1, 4, n_way=2, k_shot=1, query_size=1)
    assert "has only 1 class; use data with more classes" in str(one.value), one.value
    with pytest.raises(ConfigError, match=r"with only 1 image; "):
        check_classes("the 'all' split", 6, 1, n_way=2, k_shot=1, query_size=1, unit="images")


def test_classes_sharing_an_image_or_a_name_up_to_normalisation_are_warned_of(tmp_path, monkeypatch, capsys):
    import shutil
    import unicodedata

    from reptile_fn import progress

    monkeypatch.setitem(progress._enabled, "on", True)
    root = write_set(tmp_path / "data", {"ant": 3, "bee": 3, "cat": 3})
    I.load_images(root, image_size=16, cache=False)
    assert "warning" not in capsys.readouterr().err  # distinct classes: nothing to say
    shutil.copytree(root / "ant", root / "ant copy")
    shutil.copytree(root / "bee", root / unicodedata.normalize("NFD", "bé"))
    shutil.copytree(root / "cat", root / unicodedata.normalize("NFC", "bé"))
    I.load_images(root, image_size=16, cache=False)
    err = capsys.readouterr().err
    assert "3 pair(s) of classes" in err and "'ant' and 'ant copy'" in err, err
    assert "'be\\u0301' and 'b\\xe9'" in err and "print the same; rename one" in err, err


def test_a_gray_set_that_lossy_coding_tinted_is_warned_of(tmp_path, monkeypatch, capsys):
    """Gray WebP photos decode with R, G and B a step apart: the set silently became colour (3 channels)."""
    from reptile_fn import progress

    monkeypatch.setitem(progress._enabled, "on", True)
    rng = np.random.default_rng(0)
    for c in ("ant", "bee"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            gray = rng.integers(0, 250, (8, 8, 1))
            tinted = np.concatenate([gray, gray + 1, gray + (i % 2)], axis=-1).astype(np.uint8)
            Image.fromarray(tinted, "RGB").save(tmp_path / "data" / c / f"{i}.png")
    data = I.load_images(tmp_path / "data", image_size=8, cache=False, resample="nearest")
    assert data.channels == 3
    err = capsys.readouterr().err
    assert "is gray but for lossy-coding noise" in err and "--set model.channels=1" in err, err
    write_set(tmp_path / "colour", {"ant": 3, "bee": 3})  # real colour: nothing to say
    I.load_images(tmp_path / "colour", image_size=8, cache=False)
    assert "lossy-coding" not in capsys.readouterr().err


def test_pillow_s_warnings_name_the_image(tmp_path):
    """'Corrupt EXIF data. Expecting to read 12 bytes but only got 10.': which of thousands of files?"""
    import warnings

    root = write_set(tmp_path / "data", {"ant": 3, "bee": 3})
    plain = image_bytes(noise("L", (8, 8), 3), "JPEG")
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 6 + 20) + b"Exif\0\0" + b"MM\0\x2a\0\0\0\x08" + b"\xff" * 12
    (root / "bee" / "odd.jpg").write_bytes(plain[:2] + exif + plain[2:])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        data = I.load_images(root, image_size=8, cache=False)
    assert data.counts.tolist() == [3, 4]  # read anyway
    texts = [str(w.message) for w in said if "EXIF" in str(w.message)]
    assert texts and all(str(root / "bee" / "odd.jpg") in t and "check that it looks right" in t for t in texts), texts


def test_an_image_repeated_within_a_class_is_warned_of(tmp_path, monkeypatch, capsys):
    """Copies under other names (a.png, a copy.png): support and query could be the same image, and 5-step
    accuracy read 90 % on random images where distinct ones gave 51 %."""
    import shutil

    from reptile_fn import progress

    monkeypatch.setitem(progress._enabled, "on", True)
    root = write_set(tmp_path / "data", {"ant": 3, "bee": 3, "cat": 3})
    first = sorted((root / "bee").iterdir())[0]
    for i in range(2):
        shutil.copy(first, first.with_name(f"copy{i}{first.suffix}"))
    I.load_images(root, image_size=16, cache=False)
    err = capsys.readouterr().err
    assert "1 class(es) in" in err and "'bee': 2 repeat(s)" in err and "remove the copies" in err, err
    assert "pair(s) of classes" not in err


def test_a_class_folder_with_a_newline_in_its_name_is_one_error(tmp_path):
    root = write_set(tmp_path / "data", {"ant": 3, "bee": 3, "cat": 3})
    (root / "ant").rename(root / "an\nt")
    with pytest.raises(DataError, match=r"has a control character \(a newline\?\) in its name; rename it"):
        I.load_images(root, image_size=16, cache=False)
