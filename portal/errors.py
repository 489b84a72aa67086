"""The portal's refusals."""

from __future__ import annotations


class PortalError(ValueError):
    """A request the portal refuses; ``message`` is for the user (Italian), ``field`` names
    the input at fault, ``code`` says why (``permission``, ``too_short``, ``age``,
    ``not_representative``, ``subject_choice``, ``invalid``)."""

    def __init__(self, message: str, *, code: str = "invalid", field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
