"""The data layer's errors (their own module, so that every other data module can import them).

Both are :class:`ValueError` subclasses; ``ipd`` commands print them as a clean ``Error:``.
"""

from __future__ import annotations

__all__ = ["DatasetError", "EnvironmentUnavailableError"]


class DatasetError(ValueError):
    """A dataset is malformed; the message names the field and the problem."""


class EnvironmentUnavailableError(DatasetError):
    """An environment cannot be built: an unknown id, or the package that provides it is missing.

    ``env_id`` is the id asked for; ``install`` the command that would provide it (or None).
    """

    def __init__(self, message: str, *, env_id: str | None = None, install: str | None = None):
        super().__init__(message)
        self.env_id = env_id
        self.install = install
