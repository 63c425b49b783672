"""A run directory: what it holds, and reading it back.

``config.yaml`` (the run's config), ``checkpoint.safetensors`` (latest good parameters and algorithm
state, the config and the iteration in its metadata), ``metrics.jsonl`` (one JSON object per log or
eval record), ``summary.json`` (at the end: speed and the few-shot results of the meta-learned init
against a baseline) and, for PEFT runs, ``adapter/`` (the meta-learned adapter and its config).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import mlx.core as mx

from reptile_fn import checkpoint, io, pretrained
from reptile_fn import config as C
from reptile_fn import tree as T
from reptile_fn.errors import CheckpointError, ConfigError, ReptileFnError

CHECKPOINT = pretrained.RUN_CHECKPOINT
ADAPTER_DIR = "adapter"  # PEFT runs: adapters.safetensors + adapter_config.json
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"


def checked_iteration(iteration, cfg: C.Config, source) -> int:
    """A saved run's meta-iteration, if it is an integer within its meta_iterations; else a CheckpointError."""
    if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration <= cfg.meta_iterations:
        raise CheckpointError(f"{source} records meta-iteration {iteration!r}, not an integer in 0.."
                              f"{cfg.meta_iterations} (its meta_iterations): the file was edited or damaged; use a "
                              "checkpoint written by `reptile-fn train`")
    return iteration


def require_finite(params, source) -> None:
    """A CheckpointError if a checkpoint's parameters hold NaN or Inf (nothing sensible can be evaluated or resumed)."""
    if not bool(T.all_finite(params)):
        raise CheckpointError(f"{source} holds NaN/Inf parameters, so it cannot be evaluated or resumed; use an "
                              "earlier checkpoint of the run, or train again with a lower inner_lr or outer_lr")


class Saved:
    """A run's checkpoint as read back: config, flat arrays, iteration and the open log window."""

    def __init__(self, path: Path):
        if not path.exists():
            raise CheckpointError(f"nothing to resume: {path} does not exist; start a run without --resume")
        arrays, meta = checkpoint.load(path)
        if "config" not in meta or "iteration" not in meta:
            raise CheckpointError(f"{path} has no run config/iteration in its metadata, so it cannot be resumed; "
                                  "it was not written by `reptile-fn train`")
        self.path, self.arrays = path, arrays
        self.cfg = C.from_dict(meta["config"], source=str(path), stored=True)
        self.iteration = checked_iteration(meta["iteration"], self.cfg, path)
        self.eval_due = meta.get("eval_due") is True  # stopped before its iteration's evaluation was logged
        lw = meta.get("log_window") or {"count": 0, "sums": {}}
        try:
            self.window = {str(k): mx.array(float(v), dtype=mx.float32) for k, v in lw["sums"].items()}
            self.n_window = int(lw["count"])
        except (TypeError, ValueError, KeyError, AttributeError):
            raise CheckpointError(f"{path} has a damaged log window in its metadata; resume from a checkpoint "
                                  "written by `reptile-fn train`") from None

    def check_same_config(self, cfg: C.Config | None) -> None:
        """A ConfigError naming the keys where ``cfg`` (if given), or the run folder's config.yaml, differs from
        the run's own config (the checkpoint's: editing config.yaml changes nothing, so it must not look as if)."""
        written = self.path.parent / CONFIG
        if written.is_file() and written.stat().st_size < 4096 and not any(
                line.strip() and not line.lstrip().startswith(b"#") for line in written.read_bytes().splitlines()):
            raise ConfigError(f"--resume: {written} is empty, but a run's config is the one in its checkpoint; delete "
                              "the file and --resume writes it back")
        if written.is_file():
            try:  # read as any config file is (UTF-8, YAML, one value per key), each problem one ConfigError
                on_disk = C.from_dict(C.files.read(written)[0], source=str(written), stored=True)
            except ReptileFnError as e:
                # it is written atomically, so this is an edit: refused like a readable one, and kept for its writer
                why = str(e).splitlines()[0]
                raise ConfigError(f"--resume: {written} was edited and cannot be read back ({why[:160]}), but a run's "
                                  "config is the one in its checkpoint; undo the edit, or delete the file and --resume "
                                  "writes it back") from None
            if on_disk != self.cfg:
                diff = [k for k in C.leaf_keys() if C.get(self.cfg, k) != C.get(on_disk, k)]
                raise ConfigError(f"--resume: {written} was edited ({', '.join(diff)}), but a run's config is the one in "
                                  f"its checkpoint; undo the edit, or start a new run in another --out with the new config")
        if cfg is not None and cfg != self.cfg:
            diff = [k for k in C.leaf_keys() if C.get(self.cfg, k) != C.get(cfg, k)]
            raise ConfigError(f"--resume: the config differs from the run's in {', '.join(diff)}; "
                              "resume without --config/--set, or start a new run in another --out")


@contextlib.contextmanager
def exclusive(out: Path):
    """Hold the run folder for this process while it trains: a second ``train`` of the same run (two --resume at
    once) is refused, instead of both writing its files. The lock is the folder's own (flock), gone with the process."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out} is being trained by another process right now; wait for it to end or stop it, "
                              "or choose another --out") from None
        except OSError:  # a file system without locks: go on unguarded
            pass
        yield
    except BaseException:
        if created and not any(out.iterdir()):  # a run that failed to start leaves no empty folder behind
            out.rmdir()
        raise
    finally:
        os.close(fd)


def config_edits(run_dir: Path, cfg: C.Config) -> list[str]:
    """The keys where ``run_dir``'s config.yaml says other than ``cfg`` (its checkpoint's, which every command uses):
    none if the file is missing or agrees; ``["(unreadable)"]`` if it cannot be read back as a config."""
    written = run_dir / CONFIG
    if not written.is_file():
        return []
    try:
        on_disk = C.from_dict(C.files.read(written)[0], source=str(written), stored=True)
    except ReptileFnError:
        return ["(unreadable)"]
    return [k for k in C.leaf_keys() if C.get(cfg, k) != C.get(on_disk, k)]


def check_results_out(out_dir: Path, checkpoint: Path) -> None:
    """Refuse an ``eval --out`` that is another run's folder or its ``eval/`` (what ``compare`` reads as that run's
    results): the results of ``checkpoint`` would be shown under the other run's name."""
    for folder in (out_dir.resolve(), out_dir.resolve().parent):  # through links too
        if (folder / CHECKPOINT).is_file() and folder != checkpoint.resolve().parent:
            raise ConfigError(f"--out {out_dir} is {'another run' if folder == out_dir.resolve() else 'in another run'}'s folder "
                              f"({folder.resolve()} holds {CHECKPOINT}), and `compare` would read these results as that "
                              f"run's; pass another folder, e.g. {Path('runs', 'eval', checkpoint.parent.name)}")


def forget_start(out: Path) -> None:
    """Remove what a fresh run's start wrote (its config.yaml and an empty metrics.jsonl) when it failed before its
    first checkpoint, so that a failed ``train`` leaves nothing behind; a run that logged anything keeps it all."""
    if (out / CHECKPOINT).exists() or (out / METRICS).is_file() and (out / METRICS).stat().st_size:
        return
    for name in (CONFIG, METRICS):
        (out / name).unlink(missing_ok=True)


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files a killed writer left beside the run's files (``io.atomic_path`` names them
    ``.<name>.<random>.tmp*``); a live writer of this run cannot exist, since the run is being (re)started."""
    for folder, names in ((out, (CHECKPOINT, METRICS, SUMMARY, CONFIG)), (out / ADAPTER_DIR, ("adapters.safetensors",
                                                                                            "adapter_config.json"))):
        for name in names:
            for stale in folder.glob(f".{name}.*.tmp*"):
                stale.unlink(missing_ok=True)


def stored_config(out_dir: str | Path) -> C.Config:
    """The config of the run in ``out_dir``, from its checkpoint's metadata."""
    return Saved(Path(out_dir) / CHECKPOINT).cfg


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line that is not a whole record (what a crash or a full disk leaves at
    the end) is skipped."""
    return [r for r in io.read_jsonl(path) if isinstance(r, dict) and isinstance(r.get("iteration"), int)]


def _is_record(line: str) -> bool:
    """Whether a metrics.jsonl line is a whole record: a JSON object with an integer iteration."""
    if not io.read_jsonl_line(line):
        return False
    record = json.loads(line)
    return isinstance(record, dict) and isinstance(record.get("iteration"), int)


def truncate_metrics(path: Path, iteration: int, *, eval_due: bool = False) -> None:
    """Keep only whole records up to the checkpoint, so a resumed run's log equals an uninterrupted one (``eval_due``:
    without an evaluation record at ``iteration``, which the resumed run writes: one a stopped resume had already
    written would appear twice). A line other than the last that is not a record means the file was damaged: refused
    rather than wiped."""
    if not path.exists():
        return
    io.check_log_size(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    bad = next((n for n, line in enumerate(lines[:-1], 1) if line.strip() and not _is_record(line)), None)
    if bad is not None:
        raise CheckpointError(f"{path} line {bad} is not a metrics record: the log is damaged; move it away to resume "
                              "(the checkpoint is intact; the resumed run logs from its iteration on)")
    keep = [r for r in read_metrics(path) if r["iteration"] < iteration
            or (r["iteration"] == iteration and not (eval_due and "eval" in r))]
    io.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
