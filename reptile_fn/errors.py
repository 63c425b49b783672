"""The one exception family of reptile_fn: every error a user can cause is a ReptileFnError."""


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


class EmbeddingError(ReptileFnError):
    """Task embeddings do not match what they are compared with (an adapter bank, a hypernetwork)."""
