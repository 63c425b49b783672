"""The Omniglot zips' format: reading ``images_<set>.zip`` (``images_<set>/<Alphabet>/characterNN/CCCC_DD.png``,
105×105 1-bit PNGs, 20 drawers per character) into arrays, and the one-line errors for a corrupt or foreign file.

``tasks.omniglot`` caches what this decodes and builds the splits and the sampler on it.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from reptile_fn import progress
from reptile_fn.errors import DataError

IMAGE_SIZE = 28
SOURCE_SIZE = 105
N_DRAWERS = 20


def index_zip(path: str | os.PathLike, set_name: str) -> tuple[list[str], list[str], list[list[str]]]:
    """The layout of an Omniglot zip without decoding: (characters, alphabets, member names).

    ``members[i][d]`` is the PNG of character i by drawer d + 1. Raises DataError on a corrupt zip
    or a wrong layout.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Omniglot file {path} not found; download it with "
                        f"`reptile-fn download omniglot --data-dir {path.parent}`")
    try:
        with zipfile.ZipFile(path) as z:
            return _index(z, path, set_name)
    except PermissionError:
        raise  # the CLI says so; downloading again would not help
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise _corrupt(path, e) from None


def decode_zip(path: Path, set_name: str, resample: str) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Every character of the zip: (images (C, 20, 28, 28) uint8 with ink = 255, characters, alphabets)."""
    from PIL import Image  # Pillow is needed only to decode, not for cached or sampled data

    filters = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX,
               "lanczos": Image.Resampling.LANCZOS}
    try:
        with zipfile.ZipFile(path) as z:
            characters, alphabets, members = _index(z, path, set_name)
            images = np.empty((len(characters), N_DRAWERS, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            with progress.task(f"decoding {path.name} (once; then cached)", len(characters)) as bar:
                for i, files in enumerate(members):
                    _decode_character(z, files, images[i], path, set_name, filters[resample])
                    bar.advance()
    except PermissionError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # Pillow raises OSError/SyntaxError/ValueError on broken PNGs (DecompressionBombError on a header that claims
        # billions of pixels, before decoding); zipfile BadZipFile on a bad CRC.
        raise _corrupt(path, e) from None
    return images, tuple(characters), tuple(alphabets)


def _decode_character(z: zipfile.ZipFile, files: list[str], out: np.ndarray, path: Path, set_name: str,
                      resample) -> None:
    """One character's drawings from the zip into ``out`` (20, 28, 28), ink = 255."""
    from PIL import Image

    for d, name in enumerate(files):
        with Image.open(io.BytesIO(z.read(name))) as im:
            if im.size != (SOURCE_SIZE, SOURCE_SIZE):
                raise _layout(path, set_name, f"{name} is {im.size[0]}×{im.size[1]} pixels, "
                                              f"expected {SOURCE_SIZE}×{SOURCE_SIZE}")
            # "L" first, so the filter is honoured (Pillow resizes 1-bit images nearest-only);
            # for "nearest" this equals resizing the 1-bit image, as the reference code did.
            small = im.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), resample)
            out[d] = 255 - np.asarray(small, dtype=np.uint8)


def _index(z: zipfile.ZipFile, path: Path, set_name: str) -> tuple[list[str], list[str], list[list[str]]]:
    top = f"images_{set_name}"
    pattern = re.compile(rf"{re.escape(top)}/([^/]+)/character(\d+)/\d+_(\d+)\.png")
    found: dict[tuple[str, int], dict[int, str]] = {}
    pngs = 0
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if name.endswith("/") or name.startswith("__MACOSX/") or base.startswith(".") or not name.endswith(".png"):
            continue
        pngs += 1
        m = pattern.fullmatch(name)
        if m is None:
            raise _layout(path, set_name, f"unexpected file {name!r}")
        alphabet, number, drawer = m.group(1), int(m.group(2)), int(m.group(3))
        if not 1 <= drawer <= N_DRAWERS:
            raise _layout(path, set_name, f"{name!r}: drawer {drawer} is outside 01..{N_DRAWERS}")
        drawers = found.setdefault((alphabet, number), {})
        if drawer in drawers:
            raise _layout(path, set_name, f"{name!r} and {drawers[drawer]!r} are both drawer {drawer:02d}")
        drawers[drawer] = name
    if not found:
        first = next((n for n in z.namelist() if not n.endswith("/")), None)
        raise _layout(path, set_name, f"no images under {top}/ ({pngs} PNG files; first entry {first!r})")
    characters, alphabets, members = [], [], []
    for (alphabet, number), drawers in sorted(found.items()):
        name = f"{alphabet}/character{number:02d}"
        if len(drawers) != N_DRAWERS:
            raise _layout(path, set_name, f"{name} has {len(drawers)} drawings, expected {N_DRAWERS}")
        characters.append(name)
        alphabets.append(alphabet)
        members.append([drawers[d] for d in range(1, N_DRAWERS + 1)])
    return characters, alphabets, members


def _corrupt(path: Path, error: BaseException) -> DataError:
    return DataError(
        f"{path} is corrupt or truncated ({type(error).__name__}: {error}); download it again with "
        f"`reptile-fn download omniglot --data-dir {path.parent} --force` (it replaces the damaged file)"
    )


def _layout(path: Path, set_name: str, detail: str) -> DataError:
    return DataError(
        f"{path} does not have the Omniglot layout images_{set_name}/<Alphabet>/characterNN/CCCC_DD.png with "
        f"{N_DRAWERS} drawings of {SOURCE_SIZE}×{SOURCE_SIZE} pixels per character: {detail}; use the official "
        f"file (`reptile-fn download omniglot --data-dir {path.parent}`)"
    )
