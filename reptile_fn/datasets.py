"""Where data lives, where derived caches go, and downloading the Omniglot zips.

``data_dir()`` is the data root: an explicit argument (``--data-dir``), else ``$REPTILE_FN_DATA``.
Omniglot's zips live in ``<root>/omniglot/`` or directly in ``<root>`` (``omniglot_dir``).
``cache_dir()`` holds derived files (decoded arrays) and is separate because the data folder may
be read-only: ``$REPTILE_FN_CACHE``, else ``~/.cache/reptile_fn``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np

from reptile_fn.errors import DataError
from reptile_fn.io import atomic_path

DATA_ENV = "REPTILE_FN_DATA"
CACHE_ENV = "REPTILE_FN_CACHE"

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/images_{set}.zip"
# Size in bytes and SHA-256 of the official zips, as published by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/omniglot.txt). torchvision's Omniglot lists MD5s for the two
# large ones (background 68d2efa1b9178cc56df9314c21c6e718, evaluation 6b91aef0f799c5bb55b94e3f2daec811);
# the SHA-256s of the two small zips were also checked against copies of the official files.
OMNIGLOT_FILES: dict[str, tuple[int, str]] = {
    "background": (9464212, "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640"),
    "evaluation": (6462886, "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee"),
    "background_small1": (1319022, "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
    "background_small2": (1580917, "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
}
OMNIGLOT_SETS = tuple(OMNIGLOT_FILES)

_CHUNK = 1 << 20


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: ``explicit`` if given, else ``$REPTILE_FN_DATA``; raises DataError if neither."""
    value = explicit if explicit is not None else os.environ.get(DATA_ENV)
    if value is None or str(value) == "":
        raise DataError(
            f"no data directory given: pass --data-dir DIR (data_dir=DIR in Python) or set {DATA_ENV}=DIR, "
            "where DIR holds omniglot/images_background.zip; to fetch the files run "
            "`reptile-fn download omniglot --data-dir DIR`"
        )
    root = Path(value).expanduser()
    if root.exists() and not root.is_dir():  # else "download it into /dev/zero" would be the advice
        raise DataError(f"data directory {root} is not a folder; give --data-dir (tasks.data_dir, ${DATA_ENV}) the "
                        "folder that holds (or is to hold) omniglot/, clinc150/ or banking77/")
    return root


def cache_dir() -> Path:
    """Where derived files are cached: ``$REPTILE_FN_CACHE``, else ``~/.cache/reptile_fn``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "reptile_fn"


def cached_arrays(source: Path, kind: str, tag: str, build: Callable[[], dict[str, np.ndarray]], *,
                  valid: Callable[[dict], bool], version: int, use: bool = True,
                  fingerprint: str | None = None) -> dict[str, np.ndarray]:
    """Arrays decoded from the file ``source``: from ``cache_dir()/<kind>/`` when current, else ``build()``
    (then cached).

    The cache file is an uncompressed ``.npz`` named after ``source``'s stem, ``tag``, and hashes of its
    path and of its size, mtime and ``version``; a changed source gets a new file (the stale one is
    removed). A cache file that is damaged, stale or fails ``valid(arrays)`` is rebuilt, never trusted;
    one that cannot be written is skipped with a warning.

    ``fingerprint``: for a source that is not one file (a folder of images), a string that changes
    whenever its contents do (e.g. a digest of every file's relative path, size and mtime); it is used
    instead of ``source``'s own size and mtime, in the name and in the stored check.
    """
    if fingerprint is None:
        stat = source.stat()
        state = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{version}".encode()).hexdigest()[:12]
        meta = [version, stat.st_size, stat.st_mtime_ns]
    else:
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()
        state = hashlib.sha256(f"{digest}:{version}".encode()).hexdigest()[:12]
        meta = [version, int(digest[:15], 16)]  # 60 bits: fits the int64 meta array
    where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]
    target = cache_dir() / kind / f"{source.stem}-{tag}-{where}-{state}.npz"
    if use and target.is_file():
        try:
            with np.load(target, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            if arrays.pop("meta").tolist() == meta and valid(arrays):
                return arrays
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never trusted
            pass
    arrays = build()
    if use:
        _write_cache(target, arrays, meta, kind)
    return arrays


def _write_cache(target: Path, arrays: dict, meta: list[int], kind: str) -> None:
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays, meta=np.array(meta, dtype=np.int64))
        stem, _, _ = target.stem.rpartition("-")  # the same source and tag, older contents
        for stale in target.parent.glob(f"{stem}-*.npz"):
            if stale != target:
                stale.unlink(missing_ok=True)
    except OSError as e:
        if target.parent not in _UNWRITABLE:  # once: a command may load two data sets, or one twice
            _UNWRITABLE.add(target.parent)
            warnings.warn(f"could not write the {kind} cache {target} ({e}); loading will decode the data every time. "
                          f"Set {CACHE_ENV} to a writable folder", stacklevel=4)


_UNWRITABLE: set[Path] = set()  # cache folders this process could not write to and has warned about


def omniglot_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder of Omniglot's zips: the data root itself if it holds ``images_*.zip``, else ``<root>/omniglot``."""
    root = data_dir(explicit)
    if root.is_dir() and any(root.glob("images_*.zip")):
        return root
    return root / "omniglot"


def omniglot_zip_name(set_name: str) -> str:
    _check_set(set_name)
    return f"images_{set_name}.zip"


def download_omniglot(
    dest: str | os.PathLike,
    sets: Iterable[str] = ("background", "evaluation"),
    *,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download the official Omniglot zips into ``dest`` and verify each one's size and SHA-256.

    Each file is streamed to a temporary file in ``dest``, checked, then renamed into place, so
    ``dest`` never holds a partial or unverified zip. A file already there with the right checksum
    is kept; one with another checksum raises DataError unless ``overwrite``.

    Args:
      dest: the folder to write ``images_<set>.zip`` into (created if missing).
      sets: any of "background", "evaluation", "background_small1", "background_small2".
      overwrite: replace an existing file whose checksum differs from the published one.
      log: called with one line per file (e.g. ``print``).

    Returns:
      The paths of the requested zips, in the order of ``sets``.
    """
    say = log or (lambda _msg: None)
    sets = tuple(sets)
    for s in sets:
        _check_set(s)
    dest = Path(dest).expanduser()
    created = [p for p in (dest, *dest.parents) if not p.exists()]  # innermost first
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {dest}: {e}; choose a writable --data-dir") from e
    try:
        return _download_sets(dest, sets, overwrite, say)
    except BaseException:
        for folder in created:  # a failed download leaves none of the folders it made behind (if still empty)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _download_sets(dest: Path, sets: tuple[str, ...], overwrite: bool, say) -> list[Path]:
    paths = []
    for s in sets:
        size, sha256 = OMNIGLOT_FILES[s]
        path = dest / omniglot_zip_name(s)
        if path.exists() and not path.is_file():  # a FIFO would block the checksum, a device never end it
            kind = "a folder" if path.is_dir() else "not a regular file (a pipe, a socket or a device)"
            raise DataError(f"{path} is {kind}, where the zip goes; move it away, then download again")
        if path.exists():
            if _file_digest(path) == (size, sha256):
                say(f"{path}: already there, checksum OK")
                paths.append(path)
                continue
            if not overwrite:
                raise DataError(
                    f"{path} exists but is not the official file (its size or SHA-256 differs); delete it, "
                    "or download again with --force (overwrite=True in Python)"
                )
        url = OMNIGLOT_URL.format(set=s)
        say(f"downloading {url} ({size / 1e6:.1f} MB)")
        _download_verified(url, path, size, sha256)
        say(f"{path}: checksum OK")
        paths.append(path)
    return paths


def _download_verified(url: str, path: Path, size: int, sha256: str) -> None:
    try:
        with atomic_path(path, ".part") as tmp, open(tmp, "wb") as out:
            digest, n = hashlib.sha256(), 0
            try:
                with urlopen(url, timeout=60) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        n += len(chunk)
            except (URLError, OSError) as e:
                raise DataError(
                    f"could not download {url}: {e}; check the network connection and try again, or fetch "
                    f"the file by hand into {path.parent}"
                ) from e
            out.flush()
            if (n, digest.hexdigest()) != (size, sha256):
                raise DataError(
                    f"the download of {url} does not match its published checksum: expected {size} bytes with "
                    f"SHA-256 {sha256}, got {n} bytes with SHA-256 {digest.hexdigest()}; nothing was saved. Try "
                    "again; if it keeps failing, the file upstream has changed"
                )
    except OSError as e:
        raise DataError(f"cannot write into {path.parent}: {e}; choose a writable --data-dir") from e


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


def _check_set(set_name: str) -> None:
    if set_name not in OMNIGLOT_FILES:
        raise DataError(f"unknown Omniglot set {set_name!r}; valid sets: {', '.join(OMNIGLOT_SETS)}")
