"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class CxrError(Exception):
    """An error caused by input or configuration, not by a bug."""


class DataError(CxrError):
    """The data folder cannot produce a usable dataset (missing, empty, one class, too few images)."""


class ModelError(CxrError):
    """Unknown model name, unreadable or unsafe model file, missing registry entry."""
