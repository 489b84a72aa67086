"""The one error base: every error the project raises is a :class:`PacsError` with a
``message`` (a sentence for whoever reads it: Italian through gettext where a user
sees it, English where only an operator or a peer does) and a ``code`` (a short,
stable machine string: ``slot_taken``, ``signed``, ``out_of_resources``).

The services raise; each edge translates by code, in one place:

* HTTP: :data:`kernel.problems.HTTP_STATUS` (the DRF exception handler answers an
  RFC 9457 problem; Django views ask :func:`kernel.problems.http_status`);
* DIMSE: ``archive.dicomnet.listener.DIMSE_STATUS``;
* Celery: a task retries :class:`Unavailable` (``autoretry_for``).

A code the HTTP table does not name answers as its *kind*: the intermediate base
the error derives from (:class:`Invalid`, :class:`Forbidden`, :class:`NotFound`,
:class:`Conflict`, :class:`Unavailable`), whose own code is the kind's name; an
error of no kind is a failure (500). A code means one thing in the whole project:
two errors that mean different things carry different codes.

An error may carry more than ``message`` and ``code`` (``field``, the input at
fault; ``permanent``), named attributes its callers read.
"""

from __future__ import annotations

__all__ = ["Conflict", "Forbidden", "Invalid", "NotFound", "PacsError", "Unavailable", "kind_of"]


class PacsError(Exception):
    """An error of the project: ``message`` for whoever reads it, ``code`` for the edges.

    A subclass sets its usual ``code`` as a class attribute; a raise site may give another.
    """

    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Invalid(PacsError):
    """The request or the object is at fault: asking again the same way cannot succeed."""

    code = "invalid"


class Forbidden(PacsError):
    """Who asks may not do this."""

    code = "forbidden"


class NotFound(PacsError):
    """What was named is not there (or, to whoever asks, cannot be: the same answer)."""

    code = "not_found"


class Conflict(PacsError):
    """The state changed under the request (someone else saved, signed, booked first): look again."""

    code = "conflict"


class Unavailable(PacsError):
    """Not possible now for a reason that passes (a store down, no worker, no copy readable
    now): worth another try later. Celery tasks retry it."""

    code = "unavailable"


KINDS: tuple[type[PacsError], ...] = (Invalid, Forbidden, NotFound, Conflict, Unavailable)


def kind_of(error: PacsError) -> str:
    """The code of the kind ``error`` derives from (the first in its MRO); ``error`` for none."""
    for cls in type(error).__mro__:
        if cls in KINDS:
            return cls.__dict__["code"]
    return PacsError.code
