"""Files written whole or not at all, and one content digest.

Every file the library writes (checkpoints, adapters, metrics rewrites, summaries, results, figures,
caches, downloads) goes through ``atomic_path``: a temporary file in the target's folder, flushed to
disk, given the usual permissions, then renamed over the target. A crash, a full disk or a signal
leaves either the old file or the new one, never half of one, and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from reptile_fn.tree import Tree


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
FILE_MODE = 0o666 & ~UMASK  # what open() gives a new file: mkstemp's 0600 would differ from file to file
DIR_MODE = 0o777 & ~UMASK  # what mkdir gives a new folder: mkdtemp's 0700 likewise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` durably.

    ``suffix`` ends the temporary name (some writers pick the format from it, e.g. ``.safetensors``).
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as e:  # a write's error carries no file name: name the file it was for
            if e.filename is not None or e.errno is None:
                raise
            raise OSError(e.errno, e.strerror, str(path)) from e
        except RuntimeError as e:  # MLX's writers (safetensors, npz) say "[write] Unable to write N bytes"
            if "write" not in str(e).lower():
                raise
            full = shutil.disk_usage(path.parent).free < 1 << 20
            raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else
                          f"could not write the file ({e})", str(path)) from e
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def staged(folder: str | os.PathLike, names: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary folder inside ``folder``; when the block succeeds, the files written there replace their
    namesakes in ``folder`` together (signals held off for those renames), and each of ``names`` the block did not
    write is removed (a figure of the last evaluation that this one does not draw). A stop or an error before that
    leaves ``folder`` as it was: never a new results file beside the last run's figures."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for left in folder.glob(".staged.*"):  # what a killed (SIGKILL) writer left, long enough ago not to be live
        if left.is_dir() and time.time() - left.stat().st_mtime > 6 * 3600:
            shutil.rmtree(left, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".staged.", dir=folder))
    try:
        try:
            yield stage
        except OSError as e:  # a full disk: name the file where it goes, not the staging folder it never left
            if e.filename is None or stage not in Path(e.filename).parents:
                raise
            raise OSError(e.errno, e.strerror, str(folder / written_name(Path(e.filename).name))) from e
        written = sorted(p.name for p in stage.iterdir() if not p.name.startswith("."))
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            for name in written:
                os.replace(stage / name, folder / name)
            for name in set(names) - set(written):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (folder / name).unlink()
            _fsync_dir(folder)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def same_data(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths hold the same data: one file or folder, or two files with the same bytes (a copy)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    return a.resolve() == b.resolve() or (a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False))


def check_out_dir(path: str | os.PathLike, names: tuple[str, ...] = (), option: str = "--out", *,
                  data: tuple = ()) -> Path:
    """``path`` if it is a folder that can be written (or created) and none of ``names`` in it is a folder, nor is it
    in a folder of ``data`` (what the command reads: what it wrote there would be read as a class next time); else an
    ``OutputError`` naming ``option``. Called before the work whose results go there."""
    from reptile_fn.errors import OutputError

    path = Path(path)
    where = path.expanduser().resolve()
    for folder in data:
        if folder is not None and Path(folder).expanduser().is_dir() and (
                Path(folder).expanduser().resolve() in (where, *where.parents)):
            raise OutputError(f"{option} {path} is inside {folder}, data this command reads: what it wrote there "
                              "would be read as a class of that data next time; pass a folder outside it")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise OutputError(f"{option} {path} {what}, not a folder; pass a folder (it is created if missing)")
    try:  # a folder made and removed: os.access says yes to root everywhere, /proc and read-only mounts included
        os.rmdir(tempfile.mkdtemp(prefix=".reptile-fn-probe-", dir=existing))
    except OSError as e:
        raise OutputError(f"{option} {path}: {existing} is not writable ({e.strerror or e}); pass a folder you can "
                          "write to") from None
    for name in names:
        target = path / name
        if target.exists() and not target.is_file():
            what = "a folder" if target.is_dir() else "not a regular file (a pipe, a device or a socket)"
            raise OutputError(f"{option} {path}: {target} is {what} where a file goes; move it away or pass another "
                              "folder")
    return path


def check_json_out(path: str | os.PathLike, option: str = "--json") -> Path:
    """``path`` if a JSON file may be written there: its folder can be written, and nothing but an earlier JSON
    file (an object) would be replaced; else an ``OutputError`` naming ``option``. A checkpoint, a config or a
    data file given by mistake is never overwritten."""
    from reptile_fn.errors import OutputError

    if not str(path).strip():  # Path("") would be the working directory
        raise OutputError(f"{option} is empty; pass the JSON file to write (an unset shell variable?)")
    path = Path(path)
    run = path.parent if path.name == "summary.json" else path.parent.parent if path.name == "results.json" else None
    if run is not None and (run / "checkpoint.safetensors").exists():  # compare reads it as that run's
        raise OutputError(f"{option} {path} is the results file of the run in {run}; pass a new path, so that the "
                          "run's own results are kept")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; pass the JSON file to write, e.g. {path / 'results.json'}")
    if path.exists() and not path.is_file():
        raise OutputError(f"{option} {path} is not a regular file (a pipe, a device); pass the JSON file to write")
    check_out_dir(path.parent, option=option)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
        if path.suffix.lower() != ".json" or not head.startswith(b"{"):
            raise OutputError(f"{option} {path} exists and is not a JSON results file; pass a new path (or a .json file "
                              "to replace), so that nothing else is overwritten")
    return path


def check_readable(path: str | os.PathLike) -> None:
    """Open and close the file ``path``: a file this user may not read raises PermissionError here, which the CLI
    reports as such, before a reader's own handler could take it for a corrupt file. A missing file passes: the
    reader says what should be there."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        pass


def written_name(filename: str | os.PathLike) -> str:
    """The file an ``atomic_path`` temporary stands for (``.name.abc123xy.tmp`` -> ``name``), else ``filename``:
    what an error about the temporary should name."""
    path = Path(filename)
    match = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.tmp.*", path.name)
    return str(path.with_name(match.group(1))) if match else str(filename)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_jsonl_line(line: str) -> bool:
    """Whether ``line`` is one whole JSON value."""
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


LOG_LIMIT = 256 << 20  # bytes: a 200,000-iteration Omniglot run's metrics.jsonl is about 1 MB


def check_log_size(path: str | os.PathLike) -> None:
    """A ReptileFnError if the log ``path`` is far larger than any run writes (it would be read whole into memory)."""
    from reptile_fn.errors import ReptileFnError

    size = Path(path).stat().st_size
    if size > LOG_LIMIT:
        raise ReptileFnError(f"{path} is {size / 2 ** 30:.1f} GB, far more than a run's log ever holds (~1 MB for "
                             "200,000 iterations): it is not this run's; move it away")


def read_jsonl(path: str | os.PathLike) -> list:
    """The JSON values of a JSON-lines file, one per line; a line that is not whole JSON (what a crash or a full
    disk leaves at the end of a log) is skipped."""
    check_log_size(path)
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def digest(x: Tree | mx.array) -> str:
    """SHA-256 (hex) of an array or a tree: for each leaf, sorted by path, its path, shape, dtype and bytes.

    Checkpoints store untrained leaves as this digest; adapter files record their base's.
    """
    h = hashlib.sha256()
    leaves = [("", x)] if isinstance(x, mx.array) else sorted(tree_flatten(x), key=lambda kv: kv[0])
    for path, a in leaves:
        arr = np.asarray(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)
        h.update(f"{path}|{arr.shape}|{a.dtype}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
