"""The CUP pages' dates and names, written as the receipt writes them (:mod:`booking.formatting`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import template

from booking import formatting

register = template.Library()


@register.filter
def long_date(value: dt.date | dt.datetime | None) -> str:
    return formatting.long_date(value)


@register.filter
def long_date_time(value: dt.datetime | None) -> str:
    return formatting.long_date_time(value)


@register.filter
def person_name(user: Any) -> str:
    return formatting.person_name(user)
