"""User-facing errors. Each message says what was got, what was expected and how to fix it."""


class HetganError(Exception):
    """A problem with the user's input or environment; the CLI prints it without a traceback."""


class ConfigError(HetganError):
    """A bad config field, override or preset name."""


class DataError(HetganError):
    """A dataset that cannot be read: names the file and the reason."""


class CheckpointError(HetganError):
    """A checkpoint or artifact that is missing, corrupt or from another config."""


class TrainingDiverged(HetganError):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""


class TrainingStopped(HetganError):
    """A run that a signal (Ctrl-C, SIGTERM) stopped before train.kimg, used as if it had finished
    (`TrainResult.finished()`); its checkpoint is saved and `--resume` continues it."""


class TuneError(HetganError):
    """`hetgan tune` has nothing sound to choose: the reference configuration itself fails."""


class ExportError(HetganError):
    """An exported or quantised model that fails its check against PyTorch, or cannot be written."""


class QualityError(HetganError):
    """A model that fails its quality bound (int8 against fp32, a student against its teacher)."""
