"""Compiled queries kept between requests (kernel.querycache): the same rows as the queryset,
for any values in the slots, and a query whose text would hold a slot's value refused."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from kernel.querycache import Slot, compiled, compiled_forget


@pytest.fixture(autouse=True)
def _fresh() -> None:
    compiled_forget()


def test_a_compiled_query_answers_as_its_queryset_for_other_values(db: None) -> None:
    users = get_user_model()
    anna = users.objects.create_user(username="anna", password="x" * 12)
    bruno = users.objects.create_user(username="bruno", password="x" * 12)
    query = compiled(
        "test.users",
        [Slot("name"), Slot("pk", int), Slot("since", dt.datetime)],
        lambda name, pk, since: users.objects.filter(Q(username=name) | Q(pk=pk), date_joined__gt=since).order_by("pk"),
    )
    long_ago = timezone.now() - dt.timedelta(days=1)
    assert [u.pk for u in query.fetch(name="anna", pk=-1, since=long_ago)] == [anna.pk]
    assert [u.pk for u in query.fetch(name="nobody", pk=bruno.pk, since=long_ago)] == [bruno.pk]
    assert [u.pk for u in query.fetch(name="anna", pk=bruno.pk, since=long_ago)] == [anna.pk, bruno.pk]
    assert query.fetch(name="anna", pk=bruno.pk, since=timezone.now() + dt.timedelta(days=1)) == []
    # Every field as the ORM converts it (an aware datetime, a boolean), not as the driver gives it.
    [fetched] = query.fetch(name="anna", pk=-1, since=long_ago)
    fresh = users.objects.get(pk=anna.pk)
    assert {f.attname: getattr(fetched, f.attname) for f in users._meta.concrete_fields} == {
        f.attname: getattr(fresh, f.attname) for f in users._meta.concrete_fields
    }
    assert timezone.is_aware(fetched.date_joined) and fetched.is_active is True
    # Same key: the same compiled query; values_list queries give their tuples.
    assert (
        compiled("test.users", [Slot("name"), Slot("pk", int), Slot("since", dt.datetime)], lambda **_: 1 / 0) is query
    )
    names = compiled("test.names", [Slot("pk", int)], lambda pk: users.objects.filter(pk=pk).values_list("username"))
    assert names.rows(pk=bruno.pk) == [("bruno",)]
    with pytest.raises(TypeError):
        names.rows()


def test_a_slot_whose_value_the_query_transforms_is_refused(db: None) -> None:
    users = get_user_model()
    with pytest.raises(ValueError, match="slots"):
        compiled("test.like", [Slot("name")], lambda name: users.objects.filter(username__contains=name))
