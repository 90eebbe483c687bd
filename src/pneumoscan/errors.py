"""Every error pneumoscan raises on purpose: each message names the file or setting and the problem.

They share :class:`PneumoscanError`, so a program (and the command line) can catch all of
them at once; each also keeps the built-in base a caller would expect (``ValueError`` for
bad input, ``RuntimeError`` for a step that could not be carried out).
"""
from __future__ import annotations


class PneumoscanError(Exception):
    """Base of pneumoscan's own errors."""


class ConfigError(PneumoscanError, ValueError):
    """A configuration file or override is invalid."""


class RunError(PneumoscanError, ValueError):
    """A run directory is missing or incomplete; the message names the file."""


class DataSourceError(PneumoscanError, ValueError):
    """A data source is missing or malformed; the message names the path and the problem."""


class ImageReadError(PneumoscanError, ValueError):
    """An input image cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DownloadError(PneumoscanError, RuntimeError):
    """A download failed; the message names the URL or file and the problem.

    ``offline`` is True when no attempt reached a server at all: retrying will not help,
    a hand-copied file will.
    """

    def __init__(self, message: str, *, offline: bool = False) -> None:
        super().__init__(message)
        self.offline = offline


class DistributeError(PneumoscanError, RuntimeError):
    """A distributed setup is invalid, or a worker was lost; the message says what to do."""


class WeightsError(PneumoscanError, RuntimeError):
    """Backbone weights could not be loaded."""


class ExportError(PneumoscanError, RuntimeError):
    """An export could not be written; the message says which format and why."""
