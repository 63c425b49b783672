"""Omniglot: locating and downloading the zips, decoding and caching, splits, and the episode sampler.

The real files come from ``$REPTILE_FN_TEST_OMNIGLOT`` (default: the project's
``../shared/data/omniglot``); tests that need them skip when that folder lacks them. Decoding
tests use the small official zip ``images_background_small1.zip``; the full background zip is only
indexed (not decoded) except in the slow test. Error and cache-invalidation tests build tiny
synthetic zips in the official layout.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from pathlib import Path
from urllib.error import URLError

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from reptile_fn import datasets
from reptile_fn.episode import sample_indices
from reptile_fn.errors import ConfigError, DataError
from reptile_fn.tasks import omniglot as O
from reptile_fn.episode import Episode

REAL = Path(os.environ.get("REPTILE_FN_TEST_OMNIGLOT", Path(__file__).resolve().parents[2] / "shared/data/omniglot"))
SMALL1_ALPHABETS = {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}


def real_zip(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"{path} not found: set REPTILE_FN_TEST_OMNIGLOT to a folder holding the Omniglot zips")
    return path


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No test reads the user's data root or writes the user's cache."""
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def small1(shared_cache) -> tuple[O.OmniglotSet, float]:
    """images_background_small1 decoded once into a module-wide cache, with the first load's time."""
    real_zip("images_background_small1.zip")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(datasets.CACHE_ENV, str(shared_cache))
        t0 = time.perf_counter()
        data = O.load_set("background_small1", REAL)
        return data, time.perf_counter() - t0


@pytest.fixture
def use_shared_cache(monkeypatch, shared_cache):
    monkeypatch.setenv(datasets.CACHE_ENV, str(shared_cache))


@pytest.fixture
def tasks(small1, use_shared_cache) -> O.OmniglotTasks:
    return O.make_omniglot(REAL, n_way=5, k_shot=2, query_size=3, background="background_small1")


def png(pixels: np.ndarray) -> bytes:
    """A 1-bit PNG; ``pixels`` True = white, as in Omniglot."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def make_zip(path: Path, set_name: str = "background", *, alphabets: int = 3, characters: int = 4,
             drawers: int = 20, size: int = 105, seed: int = 0, top: str | None = None) -> Path:
    """A synthetic zip in the official layout, with random strokes of ink on white."""
    rng = np.random.default_rng(seed)
    top = top or f"images_{set_name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        cid = 0
        for a in range(alphabets):
            for c in range(1, characters + 1):
                cid += 1
                for d in range(1, drawers + 1):
                    z.writestr(f"{top}/Alphabet{a}_{seed}/character{c:02d}/{cid:04d}_{d:02d}.png",
                               png(rng.random((size, size)) > 0.1))
    return path


def cache_files(root: Path) -> list[str]:
    folder = root / "omniglot"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --- locating data ------------------------------------------------------------------------------

def test_data_dir_explicit_env_or_error(monkeypatch, tmp_path):
    with pytest.raises(DataError, match="REPTILE_FN_DATA") as e:
        datasets.data_dir()
    assert "reptile-fn download omniglot --data-dir" in str(e.value)
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "env"))
    assert datasets.data_dir() == tmp_path / "env"
    assert datasets.data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_cache_dir_env_or_home(monkeypatch, tmp_path):
    assert datasets.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(datasets.CACHE_ENV)
    assert datasets.cache_dir() == Path.home() / ".cache" / "reptile_fn"


def test_omniglot_dir_is_the_root_or_its_omniglot_folder(tmp_path):
    assert datasets.omniglot_dir(tmp_path) == tmp_path / "omniglot"
    (tmp_path / "images_background.zip").touch()
    assert datasets.omniglot_dir(tmp_path) == tmp_path


# --- downloading (never over the network) -------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve(monkeypatch, payload: bytes | Exception) -> list[str]:
    urls: list[str] = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        if isinstance(payload, Exception):
            raise payload
        return FakeResponse(payload)

    monkeypatch.setattr(datasets, "urlopen", fake_urlopen)
    return urls


def test_download_verifies_and_renames_into_place(monkeypatch, tmp_path):
    official = real_zip("images_background_small1.zip").read_bytes()
    assert (len(official), hashlib.sha256(official).hexdigest()) == datasets.OMNIGLOT_FILES["background_small1"]
    urls = serve(monkeypatch, official)
    dest = tmp_path / "data"
    paths = datasets.download_omniglot(dest, ["background_small1"])
    assert paths == [dest / "images_background_small1.zip"]
    assert paths[0].read_bytes() == official
    assert urls == ["https://github.com/brendenlake/omniglot/raw/master/python/images_background_small1.zip"]
    assert sorted(os.listdir(dest)) == ["images_background_small1.zip"]
    # Already there and verified: nothing is fetched.
    assert datasets.download_omniglot(dest, ["background_small1"]) == paths
    assert len(urls) == 1


def test_download_checksum_mismatch_leaves_nothing(monkeypatch, tmp_path):
    official = real_zip("images_background_small1.zip").read_bytes()
    tampered = bytearray(official)
    tampered[1000] ^= 0xFF
    serve(monkeypatch, bytes(tampered))
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="does not match its published checksum") as e:
        datasets.download_omniglot(dest, ["background_small1"])
    assert "nothing was saved" in str(e.value)
    assert not dest.exists()  # the folder the download made is gone with it: no empty data folder left behind
    dest.mkdir()
    serve(monkeypatch, official[:-10])  # truncated
    with pytest.raises(DataError, match="published checksum"):
        datasets.download_omniglot(dest, ["background_small1"])
    assert os.listdir(dest) == []  # a folder that was there stays


def test_download_network_error_and_existing_bad_file(monkeypatch, tmp_path):
    serve(monkeypatch, URLError("no route to host"))
    with pytest.raises(DataError, match="could not download .*no route to host"):
        datasets.download_omniglot(tmp_path, ["background"])
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="could not download"):  # the folders it made for it go again
        datasets.download_omniglot(tmp_path / "new" / "deeper", ["background"])
    assert os.listdir(tmp_path) == []
    (tmp_path / "images_background.zip").write_bytes(b"not the official file")
    with pytest.raises(DataError, match="exists but is not the official file.*--force"):
        datasets.download_omniglot(tmp_path, ["background"])
    with pytest.raises(DataError, match="unknown Omniglot set 'foo'"):
        datasets.download_omniglot(tmp_path, ["foo"])


def test_download_refuses_a_folder_or_a_pipe_where_the_zip_goes(monkeypatch, tmp_path):
    """A FIFO there blocked the checksum forever (/dev/zero linked there read forever); a folder was 'Is a
    directory; check the path, its permissions and the free space'."""
    serve(monkeypatch, URLError("must not be reached"))
    (tmp_path / "d" / "images_background.zip").mkdir(parents=True)
    with pytest.raises(DataError, match="is a folder, where the zip goes; move it away"):
        datasets.download_omniglot(tmp_path / "d", ["background"], overwrite=True)
    (tmp_path / "p").mkdir()
    os.mkfifo(tmp_path / "p" / "images_background.zip")
    with pytest.raises(DataError, match="not a regular file .* move it away"):
        datasets.download_omniglot(tmp_path / "p", ["background"])


def test_download_overwrite_replaces_a_bad_file(monkeypatch, tmp_path):
    official = real_zip("images_background_small1.zip").read_bytes()
    serve(monkeypatch, official)
    (tmp_path / "images_background_small1.zip").write_bytes(b"old")
    datasets.download_omniglot(tmp_path, ["background_small1"], overwrite=True)
    assert (tmp_path / "images_background_small1.zip").read_bytes() == official


# --- layout and decoding ------------------------------------------------------------------------

def test_full_background_layout():
    characters, alphabets, members = O.index_zip(real_zip("images_background.zip"), "background")
    assert len(characters) == 964 and len(set(characters)) == 964
    assert len(set(alphabets)) == 30
    assert all(len(m) == 20 for m in members)
    assert sum(len(m) for m in members) == 19280
    assert members[0][0] == "images_background/Alphabet_of_the_Magi/character01/0709_01.png"
    assert members[0][19].endswith("_20.png")


def test_load_small1_counts_shapes_and_ink(small1):
    data, _ = small1
    characters, alphabets, members = O.index_zip(REAL / "images_background_small1.zip", "background_small1")
    n = len(characters)
    assert data.images.shape == (n, 20, 28, 28) and data.images.dtype == np.uint8
    assert data.characters == tuple(characters) and data.alphabets == tuple(alphabets)
    assert set(data.alphabets) == SMALL1_ALPHABETS
    assert sum(len(m) for m in members) == data.images.shape[0] * 20 == 2720
    assert set(np.unique(data.images).tolist()) == {0, 255}  # "nearest" keeps the images binary
    ink = data.images.mean(axis=(2, 3)) / 255  # per image
    assert 0.04 < ink.mean() < 0.15, ink.mean()  # mostly background, ink = 1
    assert ink.min() > 0 and ink.max() < 0.5
    assert data.images[:, :, 0, 0].max() == 0  # corners are background


def test_decoding_matches_the_reference_preprocessing(small1):
    """As supervised-reptile's ``Image.open(f).resize((28, 28))``, with the ink inverted to 1."""
    data, _ = small1
    _, _, members = O.index_zip(REAL / "images_background_small1.zip", "background_small1")
    with zipfile.ZipFile(REAL / "images_background_small1.zip") as z:
        for i, d in [(0, 0), (7, 13), (135, 19)]:
            reference = np.array(Image.open(io.BytesIO(z.read(members[i][d]))).resize((28, 28)))
            np.testing.assert_array_equal(data.images[i, d], np.where(reference, 0, 255))


def test_other_resampling_is_grayscale_with_similar_ink(small1, use_shared_cache):
    data, _ = small1
    box = O.load_set("background_small1", REAL, resample="box")
    assert box.images.shape == data.images.shape
    assert len(np.unique(box.images)) > 10
    assert abs(box.images.mean() - data.images.mean()) / 255 < 0.02
    with pytest.raises(ConfigError, match="resample must be one of"):
        O.load_set("background_small1", REAL, resample="bilinear")


# --- cache --------------------------------------------------------------------------------------

def test_cache_round_trip_is_equal_and_fast(small1, shared_cache, use_shared_cache):
    data, first = small1
    files = [f for f in cache_files(shared_cache) if f.startswith("images_background_small1-nearest-")]
    assert len(files) == 1 and files[0].endswith(".npz")
    assert not any(f.endswith(".tmp") for f in cache_files(shared_cache))
    t0 = time.perf_counter()
    again = O.load_set("background_small1", REAL)
    cached = time.perf_counter() - t0
    assert cached < 0.25 and cached < first / 3, (cached, first)
    np.testing.assert_array_equal(again.images, data.images)
    assert again.characters == data.characters and again.alphabets == data.alphabets


def test_changed_zip_rebuilds_and_replaces_the_stale_cache(tmp_path, monkeypatch):
    decodes = []
    decode = O._decode_zip
    monkeypatch.setattr(O, "_decode_zip", lambda *a: decodes.append(a) or decode(*a))
    cache = tmp_path / "cache"
    zip_file = make_zip(tmp_path / "data" / "images_background.zip", characters=2, seed=1)
    first = O.load_set("background", tmp_path / "data")
    O.load_set("background", tmp_path / "data")
    assert len(decodes) == 1 and len(cache_files(cache)) == 1
    make_zip(zip_file, characters=3, seed=2)  # new contents
    second = O.load_set("background", tmp_path / "data")
    assert len(decodes) == 2 and second.images.shape[0] == 9 != first.images.shape[0]
    assert len(cache_files(cache)) == 1  # the stale file is gone
    stat = zip_file.stat()
    os.utime(zip_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same size, new mtime
    O.load_set("background", tmp_path / "data")
    assert len(decodes) == 3 and len(cache_files(cache)) == 1
    O.load_set("background", tmp_path / "data", cache=False)
    assert len(decodes) == 4


def test_damaged_cache_file_is_rebuilt(tmp_path):
    make_zip(tmp_path / "data" / "images_background.zip", characters=2)
    data = O.load_set("background", tmp_path / "data")
    (name,) = cache_files(tmp_path / "cache")
    (tmp_path / "cache" / "omniglot" / name).write_bytes(b"garbage")
    again = O.load_set("background", tmp_path / "data")
    np.testing.assert_array_equal(again.images, data.images)


def test_unwritable_cache_warns_and_still_loads(tmp_path, monkeypatch):
    make_zip(tmp_path / "data" / "images_background.zip", characters=1)
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "a_file" / "cache"))
    with pytest.warns(UserWarning, match="(?i)could not write the omniglot cache"):
        data = O.load_set("background", tmp_path / "data")
    assert data.images.shape == (3, 20, 28, 28)


# --- errors -------------------------------------------------------------------------------------

def assert_no_cache(tmp_path: Path) -> None:
    assert cache_files(tmp_path / "cache") == []


def test_missing_zip_names_the_path_and_the_download_command(tmp_path):
    with pytest.raises(DataError) as e:
        O.load_set("background", tmp_path)
    message = str(e.value)
    assert str(tmp_path / "omniglot" / "images_background.zip") in message
    assert f"reptile-fn download omniglot --data-dir {tmp_path}" in message
    with pytest.raises(DataError, match="--sets background_small1"):
        O.load_set("background_small1", tmp_path)
    assert_no_cache(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad_crc"])
def test_corrupt_zip_raises_one_clear_error(tmp_path, damage):
    path = make_zip(tmp_path / "good" / "images_background.zip", characters=1)
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        raw = bytearray(b"this is not a zip file" * 100)
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:  # flip bytes inside the first member's compressed data: its CRC check fails
        with zipfile.ZipFile(path) as z:
            info = z.infolist()[0]
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        for i in range(start + 20, start + 40):
            raw[i] ^= 0xFF
    bad = tmp_path / "bad" / "images_background.zip"
    bad.parent.mkdir()
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="is corrupt or truncated") as e:
        O.load_set("background", bad.parent)
    assert str(bad) in str(e.value) and "reptile-fn download omniglot" in str(e.value)
    assert_no_cache(tmp_path)


@pytest.mark.parametrize("problem, detail", [
    ("top", "unexpected file"),
    ("drawers", "has 19 drawings, expected 20"),
    ("size", "is 64×64 pixels, expected 105×105"),
    ("empty", "no images under images_background/"),
])
def test_wrong_layout_raises_one_clear_error(tmp_path, problem, detail):
    path = tmp_path / "data" / "images_background.zip"
    if problem == "top":
        make_zip(path, characters=1, top="images_background_small1")
    elif problem == "drawers":
        make_zip(path, characters=1, drawers=19)
    elif problem == "size":
        make_zip(path, characters=1, size=64)
    else:
        path.parent.mkdir(parents=True)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("README.txt", "hello")
    with pytest.raises(DataError, match="does not have the Omniglot layout") as e:
        O.load_set("background", tmp_path / "data")
    assert detail in str(e.value)
    assert_no_cache(tmp_path)


# --- rotations and splits -----------------------------------------------------------------------

def test_rotations_make_four_classes_per_character(small1):
    images = small1[0].images[:5]
    rotated = O.with_rotations(images)
    assert rotated.shape == (20, 20, 28, 28)
    for c in range(5):
        for r in range(4):
            np.testing.assert_array_equal(rotated[4 * c + r], np.rot90(images[c], r, axes=(-2, -1)))
    # r·90° counter-clockwise, as PIL's Image.rotate(90 r)
    one = images[1, 0]
    np.testing.assert_array_equal(rotated[4 + 1, 0], np.array(Image.fromarray(one).rotate(90)))


def test_alphabet_split_of_the_background_set():
    characters, alphabets, _ = O.index_zip(real_zip("images_background.zip"), "background")
    split = O.alphabet_split(alphabets, seed=0)
    groups = {name: {alphabets[i] for i in idx} for name, idx in split.items()}
    assert {k: len(v) for k, v in groups.items()} == {"train": 20, "val": 5, "test": 5}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(964))
    # stable for a seed, whatever the order of the listing; another seed gives another split
    again = O.alphabet_split(alphabets, seed=0)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    perm = np.random.default_rng(0).permutation(len(alphabets))
    shuffled = O.alphabet_split([alphabets[i] for i in perm], seed=0)
    assert {k: {alphabets[perm[i]] for i in v} for k, v in shuffled.items()} == groups
    other = O.alphabet_split(alphabets, seed=1)
    assert {alphabets[i] for i in other["test"]} != groups["test"]


def test_standard_split_sizes_disjoint_and_stable():
    names = [f"A{i // 20}/character{i % 20 + 1:02d}" for i in range(1623)]
    split = O.standard_split(names, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 1200, "val": 0, "test": 423}
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(1623))
    with_val = O.standard_split(names, seed=0, val_characters=100)
    assert {k: len(v) for k, v in with_val.items()} == {"train": 1100, "val": 100, "test": 423}
    np.testing.assert_array_equal(with_val["test"], split["test"])  # the test set never moves
    assert set(with_val["train"]) | set(with_val["val"]) == set(split["train"])
    np.testing.assert_array_equal(O.standard_split(names, seed=0)["test"], split["test"])
    assert set(O.standard_split(names, seed=1)["test"]) != set(split["test"])
    with pytest.raises(ConfigError):
        O.standard_split(names[:1000])


def test_load_split_standard_protocol_with_both_zips(tmp_path, monkeypatch):
    monkeypatch.setattr(O, "STANDARD_TRAIN_CHARACTERS", 12)
    data = tmp_path / "data"
    make_zip(data / "images_background.zip", alphabets=3, characters=4, seed=1)
    make_zip(data / "images_evaluation.zip", "evaluation", alphabets=2, characters=4, seed=2)
    assert O.resolve_protocol("auto", data) == "standard"
    train, test = O.load_split("train", data), O.load_split("test", data)
    assert (len(train.characters), len(test.characters)) == (12, 8)
    assert not set(train.characters) & set(test.characters)
    assert len(set(train.characters) | set(test.characters)) == 20
    assert len(O.load_split("evaluation", data).characters) == 8
    with pytest.raises(ConfigError, match="val_characters > 0"):
        O.load_split("val", data)
    val = O.load_split("val", data, val_characters=2)
    assert len(val.characters) == 2 and set(val.characters) <= set(train.characters)
    tasks = O.make_omniglot(data, n_way=3, k_shot=1, query_size=1)
    assert tasks.protocol == "standard"
    assert tasks.train_images.shape[0] == 4 * 12 and tasks.test_images.shape[0] == 8
    for split in ("evaluation", "background"):  # both hold meta-training characters under this protocol
        with pytest.raises(ConfigError, match=f"test_split = {split} under the standard protocol"):
            O.make_omniglot(data, n_way=3, k_shot=1, query_size=1, test_split=split)
    disjoint = O.make_omniglot(data, n_way=3, k_shot=1, query_size=1, test_split="evaluation", protocol="alphabets")
    assert disjoint.protocol == "alphabets" and disjoint.test_images.shape[0] == 8  # the whole evaluation set


def test_only_background_uses_the_alphabet_protocol(small1, use_shared_cache, tmp_path):
    data, _ = small1
    assert O.resolve_protocol("auto", REAL, "background_small1") == "alphabets"
    parts = {name: O.load_split(name, REAL, background="background_small1") for name in ("train", "val", "test")}
    alphabets = {name: set(p.alphabets) for name, p in parts.items()}
    assert [len(alphabets[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    assert set().union(*alphabets.values()) == SMALL1_ALPHABETS
    assert sum(len(p.characters) for p in parts.values()) == len(data.characters)
    whole = O.load_split("background", REAL, background="background_small1")
    np.testing.assert_array_equal(whole.images, data.images)
    with pytest.raises(ConfigError, match="standard protocol uses the full background"):
        O.load_split("train", REAL, protocol="standard", background="background_small1")
    (tmp_path / "images_background.zip").symlink_to(REAL / "images_background_small1.zip")
    with pytest.raises(DataError, match="images_evaluation.zip not found"):  # a folder with the background set only
        O.load_split("evaluation", tmp_path)


def test_sampler_rotates_train_classes_only_by_default(small1, use_shared_cache):
    plain = O.make_omniglot(REAL, background="background_small1")
    train = O.load_split("train", REAL, background="background_small1")
    test = O.load_split("test", REAL, background="background_small1")
    assert plain.train_images.shape == (4 * len(train.characters), 20, 28, 28)
    assert plain.test_images.shape == (len(test.characters), 20, 28, 28)
    both = O.make_omniglot(REAL, background="background_small1", rotate_test=True)
    assert both.test_images.shape[0] == 4 * len(test.characters)
    np.testing.assert_array_equal(np.array(plain.train_images[::4]), train.images)
    val = O.make_omniglot(REAL, background="background_small1", test_split="val", rotate_train=False)
    assert val.test_split == "val" and val.train_images.shape[0] == len(train.characters)


# --- episodes -----------------------------------------------------------------------------------

def assert_episodes_equal(a: Episode, b: Episode) -> None:
    for name, x, y in zip(Episode._fields, a, b):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=name)


def test_sampler_interface(tasks):
    assert tasks.kind == "classification"
    assert tasks.in_dim == (28, 28, 1) and tasks.out_dim == 5
    assert (tasks.k_shot, tasks.query_size, tasks.protocol) == (2, 3, "alphabets")


def test_episode_shapes_labels_and_values(tasks):
    for sample in (tasks.sample_train, tasks.sample_test):
        ep = sample(mx.random.key(0), 4)
        assert ep.support_x.shape == (4, 10, 28, 28, 1) and ep.support_x.dtype == mx.float32
        assert ep.query_x.shape == (4, 15, 28, 28, 1) and ep.query_x.dtype == mx.float32
        assert ep.support_y.dtype == ep.query_y.dtype == mx.int32
        np.testing.assert_array_equal(np.array(ep.support_y), np.tile(np.repeat(np.arange(5), 2), (4, 1)))
        np.testing.assert_array_equal(np.array(ep.query_y), np.tile(np.repeat(np.arange(5), 3), (4, 1)))
        x = np.array(ep.support_x)
        assert x.min() == 0.0 and x.max() == 1.0 and 0.02 < x.mean() < 0.2  # ink = 1 on a 0 background


def test_episode_classes_distinct_and_drawers_disjoint(tasks):
    images = np.array(tasks.train_images)
    key = mx.random.key(3)
    ep = tasks.sample_train(key, 16)
    for i, k in enumerate(mx.random.split(key, 16)):
        classes, drawers = (np.array(a) for a in sample_indices(k, *images.shape[:2], 5, 2 + 3))
        assert len(set(classes.tolist())) == 5
        assert all(len(set(row.tolist())) == 5 for row in drawers)  # support and query drawers disjoint
        expected = images[classes[:, None], drawers].astype(np.float32) / 255
        np.testing.assert_array_equal(np.array(ep.support_x[i, ..., 0]), expected[:, :2].reshape(10, 28, 28))
        np.testing.assert_array_equal(np.array(ep.query_x[i, ..., 0]), expected[:, 2:].reshape(15, 28, 28))


def test_sampling_is_deterministic_in_the_key(tasks):
    assert_episodes_equal(tasks.sample_train(mx.random.key(7), 3), tasks.sample_train(mx.random.key(7), 3))
    a, b = tasks.sample_train(mx.random.key(7), 3), tasks.sample_train(mx.random.key(8), 3)
    assert not np.array_equal(np.array(a.support_x), np.array(b.support_x))


def test_classes_are_uniform_and_labels_unrelated_to_class_index(tasks):
    n = tasks.test_images.shape[0]
    picks = np.array(mx.vmap(lambda k: sample_indices(k, n, 20, 5, 5)[0])(mx.random.split(mx.random.key(0), 2000)))
    counts = np.bincount(picks.ravel(), minlength=n)
    assert counts.min() > 0
    assert counts.max() / counts.mean() < 1.6
    by_label = picks.mean(axis=0)  # mean class index at each label position
    assert np.ptp(by_label) < 0.1 * n, by_label


def test_sampling_works_under_compile(tasks):
    key = mx.random.key(11)
    eager = tasks.sample_train(key, 6)
    assert_episodes_equal(mx.compile(lambda k: tasks.sample_train(k, 6))(key), eager)

    # A compiled step that samples and uses the batch, as the training loop does.
    @mx.compile
    def step(w, k):
        batch = tasks.sample_train(k, 6)
        return w + batch.support_x.mean() + batch.query_y.sum()

    w = step(mx.array(0.0), key)
    assert abs(float(w) - (float(eager.support_x.mean()) + float(eager.query_y.sum()))) < 1e-5

    # The data passed as an argument instead of captured.
    passed = mx.compile(lambda images, k: O.sample_episodes(images, k, 6, n_way=5, k_shot=2, query_size=3))
    assert_episodes_equal(passed(tasks.train_images, key), eager)


def test_sampler_validates_its_sizes(small1, use_shared_cache):
    with pytest.raises(ConfigError, match="k_shot \\+ query_size = 21"):
        O.make_omniglot(REAL, background="background_small1", k_shot=1, query_size=20)
    with pytest.raises(ConfigError, match="n_way = 200 but the 'test' split has only"):
        O.make_omniglot(REAL, background="background_small1", n_way=200)
    with pytest.raises(ConfigError, match="k_shot must be an integer >= 1"):
        O.make_omniglot(REAL, background="background_small1", k_shot=0)
    with pytest.raises(ConfigError, match="train_split must be one of"):
        O.make_omniglot(REAL, background="background_small1", train_split="training")


@pytest.mark.slow
def test_full_background_decodes_and_caches(tmp_path):
    real_zip("images_background.zip")
    t0 = time.perf_counter()
    data = O.load_set("background", REAL)
    first = time.perf_counter() - t0
    assert data.images.shape == (964, 20, 28, 28) and len(set(data.alphabets)) == 30
    assert 0.04 < data.images.mean() / 255 < 0.15
    t0 = time.perf_counter()
    again = O.load_set("background", REAL)
    assert time.perf_counter() - t0 < 0.5 < first
    np.testing.assert_array_equal(again.images, data.images)
    auto = "standard" if (REAL / "images_evaluation.zip").is_file() else "alphabets"
    assert O.make_omniglot(REAL, n_way=20, k_shot=5, query_size=15).protocol == auto
    tasks = O.make_omniglot(REAL, n_way=20, k_shot=5, query_size=15, protocol="alphabets")
    split = O.alphabet_split(data.alphabets)
    assert tasks.train_images.shape[0] == 4 * len(split["train"])
    assert tasks.sample_train(mx.random.key(0), 2).support_x.shape == (2, 100, 28, 28, 1)


def test_synthetic_zips_have_the_official_layout(tmp_path):
    """Guards the synthetic fixtures themselves: make_zip writes what the loader expects."""
    path = make_zip(tmp_path / "images_background.zip", alphabets=2, characters=2)
    characters, alphabets, members = O.index_zip(path, "background")
    assert characters == ["Alphabet0_0/character01", "Alphabet0_0/character02",
                          "Alphabet1_0/character01", "Alphabet1_0/character02"]
    assert len(set(alphabets)) == 2 and all(len(m) == 20 for m in members)
    with pytest.raises(DataError, match="not found"):
        O.index_zip(tmp_path / "images_evaluation.zip", "evaluation")


@pytest.mark.slow
def test_short_meta_training_beats_chance_and_a_random_init(tmp_path, monkeypatch):
    # 5-way 1-shot on the alphabet split of the background set: 60 Reptile iterations are enough
    # to lift held-out accuracy clearly above chance (20%) and above a random init.
    from reptile_fn import config as C
    from reptile_fn import run as R

    zip_path = real_zip("images_background.zip")
    monkeypatch.setenv("REPTILE_FN_CACHE", str(tmp_path / "cache"))
    cfg = C.load(Path(__file__).resolve().parents[1] / "configs" / "omniglot_5w1s.yaml",
                 [f"tasks.data_dir={zip_path.parent}", "meta_iterations=60", "eval.episodes=60",
                  "eval.inner_steps=10", "eval.every=1000", "log_every=20", "checkpoint_every=60"])
    summary = R.train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    meta = summary["eval"]["inits"]["meta"]["metric"]["mean"][-1]
    rand = summary["eval"]["inits"]["random"]["metric"]["mean"][-1]
    assert meta > 0.35 and meta > rand + 0.05, (meta, rand)


def test_a_data_directory_that_is_a_file_is_named_without_advice_to_download_into_it(tmp_path, monkeypatch):
    """--data-dir /dev/zero was told to `reptile-fn download omniglot --data-dir /dev/zero`."""
    (tmp_path / "f").write_text("x")
    for value in ("/dev/null", str(tmp_path / "f")):
        with pytest.raises(DataError, match="is not a folder; give --data-dir") as e:
            datasets.data_dir(value)
        assert "download" not in str(e.value)
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "f"))
    with pytest.raises(DataError, match="is not a folder"):
        datasets.data_dir()
