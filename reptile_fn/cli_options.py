"""Command-line options several ``reptile-fn`` commands share, and the parsing of a path argument.

Light on purpose (typer only): ``reptile-fn --help`` never imports MLX.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file, or a shipped config's name (e.g. sine, "
                         "omniglot_5w1s; `reptile-fn info` lists them). Default: the built-in default config.")
SetOpt = typer.Option([], "--set", "-s", help="Override one config key, e.g. --set inner_lr=0.02 (repeatable).")
DataDirOpt = typer.Option(None, "--data-dir", help="Data folder (Omniglot zips); sets tasks.data_dir.")
EncoderOpt = typer.Option(None, "--encoder", help="Text runs: a BERT-style folder (model.safetensors, tokenizer.json, "
                          "config.json) instead of all-MiniLM-L6-v2; sets model.encoder.")


def _with_data_dir(sets: List[str], data_dir: Optional[Path], encoder: Optional[Path] = None) -> List[str]:
    # paths as JSON strings (valid YAML): a path is never parsed as YAML ("a #2" is not a comment, "null" no null)
    return [*sets, *([f"tasks.data_dir={json.dumps(str(data_dir))}"] if data_dir else []),
            *([f"model.encoder={json.dumps(str(encoder))}"] if encoder else [])]


def path_arg(value: str | os.PathLike) -> Path:
    """A command-line path: refused (a ValueError, which typer reports as a bad option value) if it is empty,
    since ``Path("")`` would silently mean the working directory, the usual result of an unset shell variable."""
    if not str(value).strip():
        raise ValueError("it is empty; pass a path (an unset shell variable?)")
    return Path(value)
