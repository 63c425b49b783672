"""Config files: finding one (a path, or the name of a config shipped with the package) and reading it as
strict YAML (UTF-8, one value per key, numbers as YAML 1.2 reads them). Every problem is one ``ConfigError``
naming the file and the fix."""

from __future__ import annotations

import os
import re
import select
from pathlib import Path

import yaml

from reptile_fn.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1]  # reptile_fn/


def shipped_dir() -> Path | None:
    """The folder of shipped configs: ``reptile_fn/configs/`` in an installed wheel, the repository's
    ``configs/`` in a source checkout; None if neither is there."""
    installed, checkout = PACKAGE / "configs", PACKAGE.parent / "configs"
    if installed.is_dir():
        return installed
    if checkout.is_dir() and (PACKAGE.parent / "pyproject.toml").is_file():
        return checkout
    return None


def shipped_names() -> list[str]:
    """Names of the shipped configs (``omniglot_5w1s`` for ``omniglot_5w1s.yaml``), sorted."""
    folder = shipped_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def resolve(path: str | Path) -> Path:
    """``path`` if it exists, else the shipped config it names (``sine`` or ``sine.yaml``, no folder part). A bare
    name that is both a folder here (a run named ``default``) and a shipped config is an error naming both."""
    p = Path(path)
    name = p.name.removesuffix(".yaml").removesuffix(".yml")
    folder = shipped_dir()
    shipped = folder / f"{name}.yaml" if str(path) == p.name and folder else None
    if p.is_dir() and shipped and shipped.is_file():
        inside = f"{p / 'config.yaml'} (the run's config)" if (p / "config.yaml").is_file() else "a YAML file in it"
        raise ConfigError(f"config {str(path)!r} is both a folder here and a shipped config; pass {inside} for the "
                          f"folder's, or {shipped} for the shipped one")
    if p.exists():
        return p
    available = ", ".join(shipped_names()) or "none found"
    if shipped and shipped.is_file():
        return shipped
    if str(path) == p.name:
        from reptile_fn.coerce import suggest

        near = suggest(name.replace("-", "_"), shipped_names()).removeprefix("; ")  # omniglot-5w1s: omniglot_5w1s
        raise ConfigError(f"config {str(path)!r} is neither a file nor a shipped config (shipped: {available}"
                          f"{'; ' + near if near else ''}); "
                          "pass a YAML file or one of those names, e.g. --config sine")
    raise ConfigError(f"config file {p} does not exist; pass an existing YAML file or a shipped config's name "
                      f"({available})")


def read(path: str | Path) -> tuple[dict, str]:
    """``(mapping, source)`` of the config file (or shipped config) ``path``; an empty file is ``{}``."""
    p = resolve(path)
    if p.is_dir():
        hint = f"; did you mean {p / 'config.yaml'} (the run's config)?" if (p / "config.yaml").is_file() else ""
        raise ConfigError(f"config {p} is a directory, not a YAML file; pass the file itself{hint}")
    try:
        raw = _read(p)
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror or e}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if raw[8:10] == b'{"' and b'"dtype"' in raw[:4096]:  # a safetensors header: 8 bytes of length, then JSON
            hint = f" ({p.parent / 'config.yaml'})" if (p.parent / "config.yaml").is_file() else ""
            raise ConfigError(f"config file {p} is a checkpoint (safetensors), not a YAML config; pass the run's "
                              f"config.yaml{hint}, or the run folder to --checkpoint") from None
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"config file {p} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
                          "save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=Loader)
    except DuplicateKey as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" on line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where} ({getattr(e, 'problem', None) or str(e).splitlines()[0]}); "
                          "fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to read (hundreds of levels); a config is a few levels of "
                          "'key: value' sections") from None
    if data is None:
        return {}, str(p)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys to values at the top level, got {type(data).__name__}; "
                          "write one 'key: value' per line")
    return data, str(p)


MAX_BYTES, PIPE_WAIT_S = 1 << 20, 10.0  # a config is a few dozen lines


def _read(p: Path) -> bytes:
    """The bytes of a config file. A pipe (``--config <(...)``, /dev/stdin) is read until its writer closes it, but
    never waited on for more than ``PIPE_WAIT_S`` without data (a named pipe nobody writes to would block forever);
    nothing is read past ``MAX_BYTES`` (/dev/zero never ends)."""
    too_big = ConfigError(f"config {p} is over {MAX_BYTES >> 20} MB; a config is a few dozen 'key: value' lines")
    if p.is_file():
        if p.stat().st_size > MAX_BYTES:
            raise too_big
        return p.read_bytes()
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    chunks, size = [], 0
    try:
        while True:
            if not select.select([fd], [], [], PIPE_WAIT_S)[0]:
                raise ConfigError(f"config {p} is a pipe that nothing wrote to for {PIPE_WAIT_S:.0f} s; pass a YAML "
                                  "file, or start the writer first")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BYTES:
                raise too_big
            chunks.append(chunk)
    finally:
        os.close(fd)


class DuplicateKey(yaml.YAMLError):
    pass


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not "the last one wins", and
    numbers are read as YAML 1.2 (and Python) read them: ``010`` is 10, not octal 8; ``1:30`` is a string, not the
    base-60 number 90; ``1e-3`` is a number (``0o``, ``0x``, ``0b`` and ``_`` separators as in Python)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' merges are overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                    seen[key] = line
                except TypeError:  # an unhashable key: the base loader says so
                    break
                if first is not None:
                    where = f"twice on line {line}" if first == line else f"twice (lines {first} and {line})"
                    raise DuplicateKey(f"key {key!r} is set {where} in one mapping; keep one of them")
        return super().construct_mapping(node, deep=deep)


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in rules if tag not in (_INT, _FLOAT)]
                                  for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$"),
                             list("-+0123456789"))
Loader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                                                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                                                  |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
                             list("-+0123456789."))
MAX_DIGITS = 64  # far past any setting's limit, far below Python's 4,300-digit cap on int()


def _construct_int(loader: Loader, node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    if len(text) > MAX_DIGITS:
        raise yaml.constructor.ConstructorError(None, None, f"the number {text[:12]}... has {len(text):,} digits, "
                                                "more than any setting takes", node.start_mark)
    sign, digits = (-1, text[1:]) if text[0] == "-" else (1, text.lstrip("+"))
    base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


Loader.add_constructor(_INT, _construct_int)
