"""The portal's refusals: one error, its ``code`` says which (:mod:`kernel.errors`)."""

from __future__ import annotations

from kernel.errors import Invalid


class PortalError(Invalid, ValueError):
    """A request the portal refuses; ``message`` is for the user (Italian), ``field`` names
    the input at fault, ``code`` says why (``permission``, ``too_short``, ``age``,
    ``not_representative``, ``subject_choice``, ``invalid``)."""

    def __init__(self, message: str, *, code: str = "invalid", field: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field
