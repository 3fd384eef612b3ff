"""Exceptions raised by l2l-jax.

Every error a user can cause by bad input is an ``L2LError``, so the command
line can print its message without a traceback. Each one also derives from the
matching built-in exception, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class L2LError(Exception):
    """Base class of every error that l2l-jax raises for bad input."""


class ConfigError(L2LError, ValueError):
    """A size, rate or option that makes no sense (``T = 0``, a negative rate, ...)."""


class UnknownNameError(L2LError, KeyError):
    """A task, optimizer or pretrained name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message.
        return str(self.args[0]) if self.args else ""


class ParamsTypeError(L2LError, TypeError):
    """Optimizee parameters or gradients that are not floating point."""


class MetaParamsMismatchError(L2LError, ValueError):
    """Meta-parameters whose structure or shapes do not fit the learned optimizer."""


class GradientsMismatchError(L2LError, ValueError):
    """Gradients (or params) whose structure or shapes do not fit the optimizer state."""


class RunDirectoryError(L2LError, FileNotFoundError):
    """A run directory that is missing, incomplete or corrupt."""


class DataError(L2LError, OSError):
    """A data file that is missing, corrupt, truncated or cannot be downloaded."""


class RunDirectoryBusyError(L2LError, BlockingIOError):
    """A run directory that another process is writing to (its lock is held)."""


class MetaTrainingError(L2LError, RuntimeError):
    """Meta-training that ran but could not produce a trained optimizer (every step non-finite)."""


class Terminated(KeyboardInterrupt):
    """Raised by meta-training on SIGTERM, after saving a checkpoint (as Ctrl-C does).

    A subclass of ``KeyboardInterrupt``, so code that handles Ctrl-C handles
    this too; ``signum`` is the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum
