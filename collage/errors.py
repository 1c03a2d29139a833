"""Errors that decide what happens to a job next: retry it later, or mark the SKU broken."""

from __future__ import annotations

from collage.text import printable


def one_line(exc: BaseException) -> str:
    """Return an exception's message on one line, for logs and error_message, never a traceback."""
    return printable(str(exc)) or type(exc).__name__


class CollageError(Exception):
    """A collage could not be built."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        """The one line an operator reads in `error_message`."""
        return printable(str(self.args[0]))


class Transient(CollageError):
    """A service did not answer in time; the job is retried with backoff."""


class S3Refused(Transient):
    """S3 refused the request (clock, keys, policy): the worker's problem, not the SKU's."""


class WorkerDied(Transient):
    """The worker building this SKU died; it is built again, a few times at most."""


class Permanent(CollageError):
    """This SKU cannot be built as it is; it is marked 'error' until someone fixes it."""


class NoPhotos(Permanent):
    """The SKU has no photos."""


class BadImageUrls(Permanent):
    """image_urls is not a list of URLs."""


class ForeignUrl(Permanent):
    """A photo URL points outside the configured bucket."""


class UnsafeKey(Permanent):
    """brand or external_id cannot be used in an object key."""


class OriginalMissing(Permanent):
    """An original photo is not in the bucket."""


class PhotoUnreadable(Permanent):
    """A photo cannot be decoded."""


class TooLarge(Permanent):
    """The photos or the collage exceed a size limit."""


class KeyTaken(Permanent):
    """Another row with the same brand and external_id owns this SKU's collage."""


class OverBudget(Permanent):
    """Building the collage took more CPU time or memory than one collage may use."""


def error_classes() -> frozenset[str]:
    """Name every CollageError class: the values a metric label may take."""
    found: set[str] = set()
    pending: list[type[CollageError]] = [CollageError]
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return frozenset(found - {CollageError.__name__})


class ConfigError(Exception):
    """A setting is missing or malformed; the program cannot start."""
