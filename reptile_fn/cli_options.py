"""What every ``reptile-fn`` command shares: its options, the parsing of a path argument, and the turning of
an error or a signal into one ``error:`` line and an exit status.

Light on purpose (typer, no MLX): ``reptile-fn --help`` never imports MLX.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from reptile_fn.errors import ReptileFnError, has_control, utf8
from reptile_fn.signals import Terminated, sigterm_as_interrupt


def path_arg(value: str | os.PathLike) -> Path:
    """A command-line path: refused (a ValueError, which typer reports as a bad option value) if it is empty,
    since ``Path("")`` would silently mean the working directory, the usual result of an unset shell variable."""
    if not str(value).strip():
        raise ValueError("it is empty; pass a path (an unset shell variable?)")
    if has_control(str(value)):
        raise ValueError(f"{str(value)!r} holds a control character (a newline?); pass the path without it")
    if not utf8(str(value)):  # bytes no UTF-8 text has: MLX and every file written name it, and cannot
        raise ValueError(f"{str(value)!r} is not valid UTF-8 (a name from another system's encoding?); rename it "
                         "(e.g. convmv -f latin1 -t utf8), or pass another path")
    try:  # pathlib's own failures, which would be a traceback wherever the path is first resolved
        Path(value).expanduser().resolve()
    except RuntimeError as e:
        raise ValueError(f"{str(value)!r} {_path_problem(e)}") from None
    return Path(value)


def _path_problem(error: RuntimeError) -> str:
    """What pathlib's RuntimeError about a path means: an unknown ~user, or symbolic links that point in a circle."""
    if "home directory" in str(error):
        return "starts with a ~user that this machine does not know; pass the path without it"
    return f"leads into symbolic links that point at each other ({error}); pass a path that leads to a file or folder"


ConfigOpt = typer.Option(None, "--config", "-c", parser=path_arg, help="YAML config file, or a shipped config's "
                         "name (e.g. sine, omniglot_5w1s; `reptile-fn info` lists them). Default: the built-in default config.")
SetOpt = typer.Option([], "--set", "-s", help="Override one config key, e.g. --set inner_lr=0.02 (repeatable).")
DataDirOpt = typer.Option(None, "--data-dir", parser=path_arg, help="Data folder (Omniglot zips); sets tasks.data_dir.")
EncoderOpt = typer.Option(None, "--encoder", parser=path_arg, help="Text runs: a BERT-style folder (model.safetensors, "
                          "tokenizer.json, config.json) instead of all-MiniLM-L6-v2; sets model.encoder.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _with_data_dir(sets: List[str], data_dir: Optional[Path], encoder: Optional[Path] = None) -> List[str]:
    # paths as JSON strings (valid YAML): a path is never parsed as YAML ("a #2" is not a comment, "null" no null)
    for option, value, keys in (("--data-dir", data_dir, ("tasks.data_dir", "data_dir")),
                                ("--encoder", encoder, ("model.encoder", "encoder"))):
        if value is not None and any(s.split("=", 1)[0].strip() in keys for s in sets):
            raise ReptileFnError(f"{option} and --set {keys[0]} both give {keys[0]} (the --set would be overridden "
                                 "without a word); give one of them")
    return [*sets, *([f"tasks.data_dir={json.dumps(str(data_dir))}"] if data_dir else []),
            *([f"model.encoder={json.dumps(str(encoder))}"] if encoder else [])]


def _writing_stdout(error: OSError) -> bool:
    """Whether ``error`` came from writing standard output (``typer.echo`` into ``> /dev/full`` or onto a full disk):
    a frame it passed through was writing to a ``file`` that is standard output. Then standard output becomes
    /dev/null, so that the exit's own flush does not fail again."""
    if getattr(error, "stdout", False):  # marked by ``printing``
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return True
    tb = error.__traceback__
    while tb is not None:
        scope = tb.tb_frame.f_locals
        try:  # click writes to a local ``file``; rich (typer's help) to its console's ``self.file``
            files = (scope.get("file"), getattr(scope.get("self"), "file", None))
        except Exception:  # an object whose attribute lookup fails is not a console
            files = (scope.get("file"),)
        if any(f is not None and f in (sys.stdout, sys.__stdout__) for f in files):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return True
        tb = tb.tb_next
    return False


class _MarkedStdout:
    """A standard output whose write errors are marked as its own (``error.stdout``), and kept in ``failed``."""

    def __init__(self, stream):
        self._stream, self.failed = stream, None

    def _marked(self, method: str, *args):
        try:
            return getattr(self._stream, method)(*args)
        except OSError as e:
            e.stdout, self.failed = True, e
            raise

    def write(self, text: str) -> int:
        return self._marked("write", text)

    def flush(self) -> None:
        return self._marked("flush")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def printing(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` (a script that prints), its standard output failures made ours: print() leaves no
    frame that names standard output, and argparse's help swallows the error (``bench --help > /dev/full``)."""
    out = _MarkedStdout(sys.stdout)
    try:
        with contextlib.redirect_stdout(out):
            result = fn(*args, **kwargs)
            out.flush()
    except SystemExit:
        if out.failed is None:
            raise
        raise out.failed from None
    if out.failed is not None:
        raise out.failed
    return result


def stdout_failed(error: OSError) -> bool:
    """If ``error`` came from writing standard output, say so in one ``error:`` line and return True."""
    if error.filename is not None or not _writing_stdout(error):
        return False
    typer.echo(f"error: cannot write standard output ({error.strerror or error}); check the file or device it is "
               "redirected to, and its free space", err=True)
    return True


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the CLI's other messages are: one 'warning: …' line on stderr, without Python's source line."""
    typer.echo("warning: " + " ".join(str(message).split()), err=True)


def _settle_mlx() -> None:
    """At exit: wait for MLX's queued work and free its streams. MLX asks a process to do so before it exits
    (ml-explore/mlx#3395, #4327): its own teardown runs after the interpreter's and can crash when work is still in
    flight, e.g. a SIGTERM that lands during an evaluation's asynchronous steps (a rare exit by segfault)."""
    mx = sys.modules.get("mlx.core")
    if mx is not None and hasattr(mx, "clear_streams"):
        try:
            mx.synchronize()
            mx.clear_streams()
        except Exception:  # nothing left to protect: the process is exiting
            pass


def aborted() -> int:
    """The exit status of a stop before a command began, which typer turns into a silent status 130, after its one
    line: a Ctrl-C (130), or a SIGTERM/SIGHUP (``signals.LAST_STOP``: 143, 129)."""
    from reptile_fn.signals import LAST_STOP

    stop = LAST_STOP[0] if LAST_STOP else None
    typer.echo(f"error: stopped by {stop.name if stop else 'Ctrl-C (SIGINT)'} before the command began; nothing was "
               "done", err=True)
    return stop.status if stop else 130


def errors_to_exit(fn):
    """Turn our errors into one 'error: …' line on stderr and exit status 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from reptile_fn import progress

        progress.enable()  # long phases report on stderr: a bar on a terminal, lines every 30 s off one
        atexit.unregister(_settle_mlx)
        atexit.register(_settle_mlx)  # once, however many commands run in this process
        try:
            with sigterm_as_interrupt(), warnings.catch_warnings():
                warnings.showwarning = _warning_line
                return fn(*args, **kwargs)
        except ReptileFnError as e:
            typer.echo("error: " + str(e).replace("\r", "\\r").replace("\n", "\\n"), err=True)  # one line, whatever it quotes
            raise typer.Exit(2) from None
        except BrokenPipeError:  # `reptile-fn info | head`: the reader has all it wanted; no error line
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
            raise typer.Exit(141) from None  # 128 + SIGPIPE, as a shell reports a command stopped by the pipe
        except PermissionError as e:
            from reptile_fn.io import written_name  # the file a temporary stands for

            where = written_name(e.filename) if e.filename else "a file or folder this command needs"
            typer.echo(f"error: permission denied: {where}; give this user access to it (chmod, chown) or use "
                       "another path", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # the machine's, not ours: a full disk, a path that cannot exist
            from reptile_fn.io import written_name

            if stdout_failed(e):  # `reptile-fn train > /dev/full`, a full disk
                raise typer.Exit(2) from None
            where = f" ({written_name(e.filename)})" if e.filename else ""
            typer.echo(f"error: {e.strerror or e}{where}; check the path, its permissions and the free space", err=True)
            raise typer.Exit(2) from None
        except RuntimeError as e:  # pathlib, on a path from a config file (the command line's are checked earlier)
            if "home directory" not in str(e) and "Symlink loop" not in str(e):
                raise
            typer.echo(f"error: a path {_path_problem(e)}", err=True)
            raise typer.Exit(2) from None
        except ImportError as e:  # a stop inside a compiled module's first import (matplotlib's): "initialization failed"
            if not isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
                raise
            _stopped(e.__cause__ or e.__context__)
        except KeyboardInterrupt as e:
            _stopped(e)

    return wrapper


def _stopped(e: KeyboardInterrupt):
    """A command stopped by Ctrl-C or a stop signal: one line, and the signal's exit status (past typer, which says
    nothing)."""
    signal_name = e.name if isinstance(e, Terminated) else "Ctrl-C (SIGINT)"
    typer.echo(f"error: stopped by {signal_name} before the command finished; files already written are "
               f"whole, the rest were not written (a training run continues with --resume)", err=True)
    raise SystemExit(e.status if isinstance(e, Terminated) else 130) from None
