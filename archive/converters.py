"""Path converters of the archive's URLs, registered on import: the URL modules
that use one import this module first."""

from __future__ import annotations

from django.urls import register_converter


class FacilityCodeConverter:
    """A facility code (``Facility.code``): upper-case letters, digits, ``-`` and ``_``.

    Distinct from every DICOMweb resource name (lower case) and from UIDs (dots).
    """

    regex = r"[A-Z0-9_-]{1,16}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(FacilityCodeConverter, "facility")
