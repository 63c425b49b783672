"""The one exception family of reptile_fn: every error a user can cause is a ReptileFnError.

And the two checks at the edge that raise them for task settings (``check_choice``, ``check_int``).
"""

import numbers


class ReptileFnError(Exception):
    """Base class: the message says what was wrong and what to do about it."""


class ConfigError(ReptileFnError):
    """A configuration file, key or value is invalid."""


class DataError(ReptileFnError):
    """A data file is missing, corrupt or has the wrong layout."""


class CheckpointError(ReptileFnError):
    """A checkpoint is missing, corrupt or does not match the model."""


class TrainingDivergedError(ReptileFnError):
    """Parameters or losses became NaN or infinite during training."""


class OutputError(ReptileFnError):
    """An output folder or file cannot be written there (a file in the way, no permission)."""


class EmbeddingError(ReptileFnError):
    """Task embeddings do not match what they are compared with (an adapter bank, a hypernetwork)."""


def check_choice(name: str, value: object, choices) -> None:
    """A ConfigError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_int(name: str, value: object, minimum: int, meaning: str) -> None:
    """A ConfigError naming ``name`` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum} ({meaning}), got {value!r}; "
                          f"set it to {minimum} or more")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (a pasted newline, say): legal in a file name, but it splits every
    line that shows the name."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def utf8(name: str) -> bool:
    """Whether ``name`` is text (Python keeps a file name's non-UTF-8 bytes as lone surrogates, which no file written
    as UTF-8 can hold)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
