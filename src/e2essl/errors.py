"""The one exception type users see.

Every problem a user can fix (a bad file, a bad setting, a missing model) is raised as
:class:`E2EError` with a single line that names the file or key and the problem. The CLI
prints that line to stderr and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class E2EError(Exception):
    """A user-facing error: one line, naming the file or key and what is wrong with it."""

    def __init__(self, message: str) -> None:
        # Collapse to one line: messages built from library errors can carry newlines.
        super().__init__(" ".join(str(message).split()))


class DataError(E2EError):
    """A data file is missing, unreadable or does not hold what it should."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ConfigError(E2EError):
    """params.yaml (or a value given on the command line) is invalid."""


class TrainingError(E2EError):
    """Training cannot go on (a NaN loss, a corrupt checkpoint, ...)."""


class TrackingError(E2EError):
    """The MLflow store is unreachable or misconfigured, or a model cannot be found."""
