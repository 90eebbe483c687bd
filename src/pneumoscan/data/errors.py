"""The error every image reader raises (its own module so the readers and checks can share it)."""
from __future__ import annotations


class ImageReadError(ValueError):
    """An input image cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
