"""How the CUP writes dates and people, the same on every page and on the receipt.

Italian writes weekdays and months in lower case ("lunedì 7 dicembre 2026"):
the project's Italian catalogue (locale/it) gives Django's names so, for every page.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import formats, timezone


def _local(value: dt.date | dt.datetime) -> dt.date | dt.datetime:
    if isinstance(value, dt.datetime) and timezone.is_aware(value):
        return timezone.localtime(value)
    return value


def long_date(value: dt.date | dt.datetime | None) -> str:
    """``lunedì 7 dicembre 2026`` (``Monday 7 December 2026`` in English); empty for None."""
    if value is None:
        return ""
    return formats.date_format(_local(value), "l j F Y")


def long_date_time(value: dt.datetime | None) -> str:
    """``lunedì 7 dicembre 2026, 08:40``, in local time; empty for None."""
    if value is None:
        return ""
    when = timezone.localtime(value) if timezone.is_aware(value) else value
    return f"{long_date(when)}, {formats.time_format(when, 'H:i')}"


def person_name(user: Any) -> str:
    """A staff member as the page names them: first and last name, else the user name."""
    if user is None:
        return ""
    full = (user.get_full_name() or "").strip()
    return full or str(user.get_username())
