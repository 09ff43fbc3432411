"""Exception types shared by every layer.

Each message says what went wrong *and* what to do about it. Errors that cross a thread or process
boundary are re-raised as one of these with the original cause chained.
"""

from __future__ import annotations


class DiffsegError(Exception):
    """Base class for every error napari-diffseg raises on purpose (user errors, bad files, bad configs)."""


class DataError(DiffsegError):
    """An image, mask or dataset folder cannot be used (corrupt, wrong shape, NaN, unknown id...)."""


class ConfigError(DiffsegError):
    """A configuration, preset or argument is invalid."""


class CheckpointError(DiffsegError):
    """Weights cannot be saved or loaded (missing files, incompatible version or architecture)."""


class TrainingDiverged(DiffsegError):
    """Training met a non-finite (NaN or infinite) loss, gradient or weight and stopped.

    The message names the stage, the step and the loss terms' values, and says what to change (most
    often a lower learning rate). Nothing trained by the diverged run is saved as a model.
    """


class Cancelled(DiffsegError):
    """A long-running loop stopped because its cancel token was set."""
