"""Values parsed from YAML, checked against a dataclass field's declared type; close-name suggestions; removed
keys: what ``config`` needs to turn a user's typo, or an old config, into one clear message."""

from __future__ import annotations

import difflib
import math
import reprlib
import sys
import types
import typing
from typing import Any, Sequence

from reptile_fn.errors import ConfigError


def coerce(v: Any, t: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(v, inner, key, source)
    if origin is tuple:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {shown(v)}")
        if any(isinstance(x, (list, tuple, dict)) for x in v):
            raise ConfigError(f"{source}: {key} must be a flat list, got {shown(v)}; write it like [a, b]")
        return tuple(coerce(x, args[0], key, source) for x in v)
    if t is bool:
        if isinstance(v, bool):
            return v
    elif t is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str) and v.isascii() and v.strip().lstrip("+-").isdigit():  # more digits than Python turns into an int
            raise ConfigError(f"{source}: {key} = {shown(v)} is far too large; give an integer such as 1000")
    elif t is float:
        x = None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            x = float(v) if isinstance(v, float) or abs(v) < 1e308 else math.inf  # an int past float64 is too large
        elif isinstance(v, str) and v.isascii():  # PyYAML (YAML 1.1) reads 1e-3 as a string; float() takes '５' too
            try:
                x = float(v)
            except ValueError:
                pass
        if x is not None and (math.isnan(x) or math.isinf(x) and "inf" in str(v).lower()):
            raise ConfigError(f"{source}: {key} must be a finite number, got {shown(v)}; give a plain number such as 0.01")
        if x is not None and not abs(x) <= FLOAT32_MAX:
            raise ConfigError(f"{source}: {key} = {shown(v)} is outside float32's range: MLX computes in float32, "
                              "whose numbers stop at ±3.4e38; give a number of smaller size")
        if x is not None and 0 < abs(x) < FLOAT32_TINY:
            raise ConfigError(f"{source}: {key} = {shown(v)} is too small: it is 0 in float32 (the smallest normal "
                              "number is 1.2e-38), so it would do nothing; give a larger number, or 0")
        if x is not None:
            return x
    elif t is str:
        if isinstance(v, str):
            return v
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))
    ascii_hint = " in ASCII digits" if t in (int, float) and isinstance(v, str) and not v.isascii() else ""
    raise ConfigError(f"{source}: {key} must be {name}, got {shown(v)}; give {name}{ascii_hint}")


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32 (CPUs may flush smaller ones to 0)


def shown(v: Any, most: int = 60) -> str:
    """``repr(v)``, cut to ``most`` characters: a 5,000-digit value is not echoed whole. A list or mapping is shown
    by ``reprlib`` (a few items a level, a few levels), since YAML aliases can make a 400-byte file a list of 10^9
    strings that a whole ``repr`` would build before it was cut."""
    if isinstance(v, (list, tuple, dict, set)):
        brief = reprlib.Repr()
        brief.maxlevel, brief.maxlist, brief.maxtuple, brief.maxdict, brief.maxset = 4, 8, 8, 8, 8
        return clipped(brief.repr(v), most)
    return clipped(repr(v), most)


def clipped(text: str, most: int) -> str:
    """``text`` cut to ``most`` characters (the last three an ellipsis) if longer."""
    return text if len(text) <= most else text[: most - 3] + "..."


def suggest(word: str, options: Sequence[str]) -> str:
    # Compare leaf names too, so that 'tasks.kshot' suggests 'tasks.k_shot'; 'REPTILE' is 'reptile' in other case.
    close = [o for o in options if o.lower() == word.lower()] or difflib.get_close_matches(word, list(options), n=1,
                                                                                              cutoff=0.5)
    if not close:
        leaf = word.split(".")[-1]
        leaves = {o.split(".")[-1]: o for o in options}
        close = [leaves[c] for c in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)]
    return f"; did you mean {close[0]!r}?" if close else ""


def without_removed(data: dict, removed: dict[str, str], only: dict[str, Any], source: str, *, quiet: bool) -> dict:
    """``data`` (a nested dict) without the dotted ``removed`` keys (key -> why it went). A removed key set to
    ``only[key]``, the one value it could take, is dropped with a one-line notice on stderr (silently when
    ``quiet``); any other value is a ConfigError saying why the key went."""
    out = data
    for key, why in removed.items():
        section, leaf = key.split(".")
        if not isinstance(data.get(section), dict) or leaf not in data[section]:
            continue
        if data[section][leaf] != only.get(key):
            raise ConfigError(f"{source}: {key} is no longer a setting ({why}); remove it from the config")
        if not quiet:
            print(f"notice: {source}: {key} is no longer a setting ({why}); ignoring it", file=sys.stderr)
        out = {**out, section: {k: v for k, v in data[section].items() if k != leaf}}
    return out
