"""Finding and decoding image files in a folder or a zip (never extracted): the file layer of ``tasks.images``.

``open_source(path)`` lists a folder or zip, ``find_classes`` reads its class layout, ``read_image`` decodes one
file (refusing decompression bombs from the header), ``read_classes`` decodes a whole set to one channel count,
and ``read_folder`` the images of a plain folder (items to label). Every bad file is one ``DataError`` naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from stat import S_ISREG
from typing import Callable, Iterator, NamedTuple

from reptile_fn import progress
from reptile_fn.errors import DataError, has_control, utf8

import numpy as np

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP")  # what Pillow may identify them as (MPO: camera JPEGs)
RESAMPLE = ("box", "nearest", "lanczos")  # tasks.resample: Pillow's BOX (area average), NEAREST, LANCZOS
MAX_PIXELS = 89_478_485
"""Pillow's default ``Image.MAX_IMAGE_PIXELS``: a larger image is refused from its header, before decoding."""
GRAY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
LAYOUTS = "<class>/<image> or <group>/<class>/<image>"


class _Listing(NamedTuple):
    """A source's non-hidden contents: image files and other files (path parts, name to open), folders."""

    images: list[tuple[tuple[str, ...], str]]
    others: list[tuple[tuple[str, ...], str]]
    dirs: set[tuple[str, ...]]


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def _list_folder(root: Path) -> tuple[_Listing, str]:
    """The folder's listing and its fingerprint (every image's relative path, size and mtime)."""
    def refuse(error: OSError) -> None:
        raise DataError(f"cannot read {error.filename} ({error.strerror}); check that it exists and may be read")

    listing, digest, seen = _Listing([], [], set()), hashlib.sha256(), {}
    for folder, subfolders, files in os.walk(root, onerror=refuse, followlinks=True):  # a linked class is a class
        real = os.path.realpath(folder)
        if real in seen:
            raise DataError(f"{folder} is a link to {seen[real]}, which is read already (a loop of links, or one class "
                            "twice); remove the link")
        seen[real] = folder
        subfolders[:] = sorted(d for d in subfolders if not _hidden(d))
        rel = Path(folder).relative_to(root).parts
        if rel:
            listing.dirs.add(rel)
        for f in sorted(files):
            if _hidden(f):
                continue
            if not all(utf8(part) for part in (folder, f)):
                raise DataError(f"{ascii(os.path.join(folder, f))} has a name that is not valid UTF-8 (from another "
                                "system's encoding?); rename it (e.g. convmv -f latin1 -t utf8)")
            if has_control("/".join((*rel, f))):
                raise DataError(f"{ascii(os.path.join(folder, f))} has a control character (a newline?) in its name; "
                                "rename it")
            name = "/".join(rel + (f,))
            (listing.images if _is_image(f) else listing.others).append((rel + (f,), name))
            if _is_image(f):
                try:
                    stat = (root / name).stat()
                except OSError as e:  # a broken link
                    refuse(e)
                if not S_ISREG(stat.st_mode):  # a named pipe would block the reader forever
                    raise DataError(f"{root / name} is not a regular file (a pipe, a device or a socket); remove it "
                                    "or replace it with the image")
                digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return listing, digest.hexdigest()


def _list_zip(z: zipfile.ZipFile, path: Path) -> _Listing:
    listing, seen = _Listing([], [], set()), set()
    for info in z.infolist():
        name = info.filename.replace("\\", "/")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if name.startswith("/") or ".." in parts or (parts and parts[0].endswith(":")):
            raise DataError(f"{path} holds an unsafe member name {info.filename!r} (absolute or with '..'); "
                            "rebuild the zip from the data set's folder")
        if not parts or any(_hidden(p) for p in parts):
            continue
        if has_control(name):  # class names are printed and written: an escape sequence would reach the terminal
            raise DataError(f"{path} holds a member name with a control character (a newline?), {ascii(name)}; "
                            "rename it and rebuild the zip")
        if parts in seen:  # zip -u appends: the reader would take the last copy twice and never the first
            raise DataError(f"{path} holds {name!r} twice (a zip appended to?); rebuild the zip from the data set's "
                            "folder")
        seen.add(parts)
        if info.is_dir():
            listing.dirs.add(parts)
            continue
        listing.dirs.update(parts[:i] for i in range(1, len(parts)))
        (listing.images if _is_image(parts[-1]) else listing.others).append((parts, info.filename))
    return listing


def find_classes(listing: _Listing, where: str, min_classes: int = 2) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """(group, class) of each class, sorted, and each class's image names, sorted by file name. A few-shot data set
    needs two classes or more; ``min_classes=1`` reads a single class too (labelled items to score)."""
    images, dirs = listing.images, listing.dirs
    if not images:
        found = f"; found {len(listing.others)} other files, e.g. {listing.others[0][1]!r}" if listing.others else ""
        raise DataError(f"no images ({' '.join(EXTENSIONS)}) in {where}{found}; give a folder or zip laid out as "
                        f"{LAYOUTS}")
    tops = {parts[0] for parts, _ in images}
    if len(tops) == 1 and min(len(parts) for parts, _ in images) >= 3:  # everything inside one top folder
        top = tops.pop()
        images = [(parts[1:], name) for parts, name in images]
        dirs = {d[1:] for d in dirs if len(d) > 1 and d[0] == top}
    by_depth = {len(parts): name for parts, name in reversed(images)}  # an example (the first) at each depth
    if 1 in by_depth:
        raise DataError(f"{by_depth[1]!r} in {where} is not in a class folder; put each class's images in a folder "
                        f"named after the class ({LAYOUTS})")
    if max(by_depth) > 3:
        raise DataError(f"{by_depth[max(by_depth)]!r} in {where} is nested too deep; expected {LAYOUTS}")
    if len(by_depth) > 1:
        raise DataError(f"{where} mixes layouts: {by_depth[2]!r} is <class>/<image> but {by_depth[3]!r} is "
                        "<group>/<class>/<image>; put every image at the same depth")
    levels = by_depth.popitem()[0] - 1
    members: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for parts, name in images:
        members.setdefault(parts[:levels], []).append((parts[-1], name))
    for depth, what in ((levels, "class"), (1, "group")):
        empty = sorted(d for d in dirs if len(d) == depth and d not in {k[:depth] for k in members})
        if empty:
            raise DataError(f"the {what} folder {'/'.join(empty[0])!r} in {where} holds no images "
                            f"({' '.join(EXTENSIONS)}); add images to it or delete it")
    keys = sorted(members, key=lambda k: (k[0], k[-1]))
    if len(keys) < min_classes:
        raise DataError(f"{where} has one class only ({'/'.join(keys[0])!r}); a few-shot data set needs a folder "
                        f"per class ({LAYOUTS}) and at least n_way classes")
    return [(k[0], "/".join(k)) for k in keys], [[name for _, name in sorted(members[k])] for k in keys]


def _pixels(fp, size: int, shown: str, resample: str = "box") -> tuple[np.ndarray, bool]:
    """The image in ``fp``, decoded and resized with ``resample``: uint8 (size, size) if grayscale, else (size, size, 3)."""
    from PIL import Image, ImageOps

    method = {"box": Image.Resampling.BOX, "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}[resample]

    Image.init()  # every plugin registered, so FORMATS can be filtered to those this Pillow has
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(fp, formats=[f for f in FORMATS if f in Image.OPEN]) as opened:
            width, height = opened.size  # from the header: nothing is decoded yet
            if width * height > MAX_PIXELS:
                raise DataError(f"{shown} is too large to decode safely: its header claims {width}×{height} pixels, "
                                f"more than {MAX_PIXELS:,}; shrink it or delete it")
            opened.load()
            im = ImageOps.exif_transpose(opened)
    gray = im.mode in GRAY_MODES
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):  # 16-bit or float: scale to 0..255 and resize as floats
        a = np.asarray(im, dtype=np.float32)
        peak = float(a.max(initial=0.0))  # 16 bits: 0..65535; "I" is 16-bit data if it exceeds 255; "F" 0..1 or 0..255
        a = a / 257 if im.mode.startswith("I;16") or (im.mode == "I" and peak > 255) else a * 255 if peak <= 1 else a
        small = Image.fromarray(np.clip(a, 0, 255).astype(np.float32), "F").resize((size, size), method)
        return np.clip(np.rint(np.asarray(small)), 0, 255).astype(np.uint8), True
    if "A" in im.mode or "a" in im.mode or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    a = np.asarray(im.convert("L" if gray else "RGB").resize((size, size), method), dtype=np.uint8)
    if not gray and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
        return a[..., 0], True  # gray content in a colour mode (a gray GIF's palette, WebP, an RGB JPEG)
    return a, gray


def read_image(opener: Callable, name: str, shown: str, size: int, resample: str = "box") -> tuple[np.ndarray, bool]:
    """``_pixels`` of the file ``opener(name)``, with every way it can be bad turned into a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with opener(name) as fp, warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            pixels = _pixels(fp, size, shown, resample)
        for w in said:  # Pillow's own warnings ("Corrupt EXIF data …") name no file
            warnings.warn(f"{shown}: {w.message}; it was read anyway: check that it looks right, or re-save it",
                          w.category if issubclass(w.category, Warning) else UserWarning, stacklevel=2)
        return pixels
    except Image.DecompressionBombError as e:  # Pillow's own check, where it is set stricter than ours
        raise DataError(f"{shown} is too large to decode safely ({e}); shrink it or delete it") from None
    except PermissionError:
        raise  # the CLI says so; the image itself may be fine
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, zipfile.BadZipFile, RuntimeError,
            NotImplementedError) as e:
        # Pillow: UnidentifiedImageError (an OSError) for a non-image, OSError/SyntaxError/ValueError for
        # broken or truncated data; zipfile: BadZipFile (a bad CRC), RuntimeError (encrypted), NotImplementedError
        why = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise DataError(f"cannot read the image {shown} ({why}); replace the file with a valid image "
                        f"({' '.join(EXTENSIONS)}) or delete it") from None


def read_classes(names: list[list[str]], size: int, opener: Callable, show: Callable,
                 cached: bool = False, resample: str = "box") -> tuple[np.ndarray, np.ndarray]:
    """Every class's images decoded: (images uint8 (N, S, S, C), counts int32). ``cached``: the caller keeps the
    result, and the progress line says so."""
    decoded, n = [], sum(map(len, names))
    with progress.task(f"decoding {n} image{'s' if n != 1 else ''}" + (" (once; then cached)" if cached else ""), n) as bar:
        for files in names:
            for name in files:
                decoded.append(read_image(opener, name, show(name), size, resample))
                bar.advance()
    gray = all(g for _, g in decoded)
    images = np.stack([a if gray or not g else np.repeat(a[..., None], 3, axis=-1) for a, g in decoded])
    return (images[..., None] if gray else images), np.array([len(f) for f in names], dtype=np.int32)


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[tuple[_Listing, Callable, Callable[[str], str], str | None]]:
    """(listing, opener of a name, how to show a name in a message, fingerprint or None for a zip)."""
    if not path.exists():
        raise DataError(f"{path} does not exist; check the path (a folder or .zip of images is wanted)")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"{path} is not a regular file (a pipe, a device or a socket); give a folder or a .zip (or an "
                        "image file, as adapt's --query)")
    if path.is_file() and path.suffix.lower() != ".zip":  # one image, say: what is wanted is the folder it is in
        raise DataError(f"{path} is a file but not a .zip; give a folder of images (or of class folders), or a .zip "
                        "of one")
    if path.is_dir():
        listing, fingerprint = _list_folder(path)
        yield listing, (lambda name: open(path / name, "rb")), (lambda name: str(path / name)), fingerprint
        return
    try:
        z = zipfile.ZipFile(path)  # reads the central directory: a corrupt zip fails here
    except PermissionError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable zip ({type(e).__name__}: {e}); make the zip again, or give the "
                        "unzipped folder") from None
    with z:
        yield _list_zip(z, path), z.open, (lambda name: f"{name!r} in {path}"), None


def read_folder(path: Path, size: int, inside: str | None = None, resample: str = "box") -> tuple[np.ndarray, list[str]]:
    """The images directly in the folder ``path`` (not in subfolders; ``inside``: in that one subfolder, e.g. the
    folder a zip was made of), decoded like ``read_classes``, with their file names: (images uint8 (n, S, S, C),
    names)."""
    where = (inside,) if inside else ()
    with open_source(path) as (listing, opener, show, _):
        names = sorted(name for parts, name in listing.images if tuple(parts[:-1]) == where)
        if not names:
            raise DataError(f"no images ({' '.join(EXTENSIONS)}) directly in {path}; put the images to label in it")
        images, _ = read_classes([names], size, opener, show, resample=resample)
    return images, names


def read_file(path: Path, size: int, resample: str = "box") -> tuple[np.ndarray, list[str]]:
    """One image file to label, decoded like ``read_folder``'s: (images uint8 (1, S, S, C), [its file name])."""
    images, _ = read_classes([[path.name]], size, lambda name: open(path.parent / name, "rb"),
                             lambda name: str(path.parent / name), resample=resample)
    return images, [path.name]


def is_image_file(path: Path) -> bool:
    return path.is_file() and _is_image(path.name)


def has_class_folders(path: Path) -> bool:
    """Whether the folder or zip at ``path`` holds its images in class folders (else they lie in it directly)."""
    with open_source(path) as (listing, _, _, _):
        return any(len(parts) > 1 for parts, _ in listing.images)


def only_folder(path: Path) -> str | None:
    """The one subfolder every image of the folder or zip at ``path`` lies directly in (a zip of a folder, or a
    single class), else None."""
    with open_source(path) as (listing, _, _, _):
        tops = {tuple(parts[:-1]) for parts, _ in listing.images}
    return next(iter(tops))[0] if len(tops) == 1 and len(next(iter(tops))) == 1 else None
