"""User-facing errors.

Every problem a user can fix (a config value, a data file, a model name, a checkpoint) is raised as a
subclass of :class:`HfTransferError` whose message names the file, key or value and says what to do.
The command-line entry points print these messages without a traceback.
"""

import signal
from pathlib import Path
from typing import Optional


class HfTransferError(Exception):
    """Base class of every error whose message is meant for the user."""


class ConfigError(HfTransferError, ValueError):
    """A configuration file or command-line override is invalid."""


class DataError(HfTransferError, ValueError):
    """The dataset cannot be loaded or used as asked."""


class ModelError(HfTransferError, ValueError):
    """The backbone or its weights cannot be created or loaded."""


class CheckpointError(HfTransferError):
    """A training checkpoint or output directory is missing, corrupt, or does not match the run."""


class PushError(HfTransferError):
    """Publishing to the Hugging Face Hub failed: login, permission, network, or the folder itself."""


class TrainingInterrupted(HfTransferError):
    """SIGINT/SIGTERM stopped the run after a resumable checkpoint was saved."""

    def __init__(self, signum: Optional[int], checkpoints: Path) -> None:
        signum = signum or signal.SIGTERM.value  # a process that was not signalled itself
        self.exit_code = 128 + signum  # the shell convention for death by that signal
        super().__init__(
            f"Stopped by {signal.Signals(signum).name}; a resumable checkpoint is in {checkpoints}. "
            "Run the same command with --output.resume to continue."
        )
