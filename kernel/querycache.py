"""Compiled ORM queries kept between requests, for the hot paths whose queries have a fixed shape.

Building a queryset (``filter``, ``annotate``, ``Exists`` subqueries) and compiling it to
SQL costs Django several times what the database takes to answer it: an instance's
``/rendered`` spent half of its CPU there, most of it on the access policy's condition
(``archive.access.visible_q``), whose SQL is the same for every request of one principal.

:func:`compiled` builds a query once per *shape* (a key the caller gives: everything the
query's text depends on, such as the principal and the parameters of an annotation), with
:class:`Slot` values standing for what changes between requests (the UIDs in the URL),
compiles it, and keeps the SQL, its parameters and Django's compiler. :meth:`CompiledQuery.fetch`
then runs that SQL with the request's values in the slots and turns the rows into model
instances as ``QuerySet.__iter__`` does (``select_related`` objects and annotations included):
the same statement Django would have sent, without building and compiling it again.

A query whose text would embed a slot's value (a ``LIKE`` pattern, a transformed value)
cannot be kept: :func:`compiled` raises ``ValueError`` when a slot is not found verbatim
among the parameters. A value the key does not capture must not shape the query: the key
is the caller's contract (``archive.dicomweb.scope`` documents its own).
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators

MAX_ENTRIES = 512


@dataclass(frozen=True)
class Slot:
    """A value that changes between runs of a compiled query: ``str`` or ``int``."""

    name: str
    kind: type = str

    def stand_in(self, token: str) -> Any:
        if self.kind is int:
            # Far outside any primary key; never a value a real row has.
            return -(10**17) - int.from_bytes(token.encode()[:6], "big")
        return f"\x1f{self.name}:{token}\x1f"


class CompiledQuery:
    """One query's SQL, its parameters (some of them slots) and the compiler that made them."""

    def __init__(self, queryset: QuerySet[Any], stand_ins: dict[str, Any]) -> None:
        self.db = queryset.db
        self.vendor = connections[self.db].vendor
        compiler = queryset.query.get_compiler(using=self.db)
        sql, params = compiler.as_sql()
        where: dict[int, str] = {}
        for i, value in enumerate(params):
            for name, stand_in in stand_ins.items():
                if type(value) is type(stand_in) and value == stand_in:
                    where[i] = name
        missing = set(stand_ins) - set(where.values())
        if missing or any(str(s) in sql for s in stand_ins.values()):
            raise ValueError(f"slots {sorted(missing)} are not parameters of the compiled query")
        self.sql = sql
        self.params = tuple(params)
        self.slots = where
        self.compiler = compiler
        klass_info = compiler.klass_info
        assert klass_info is not None, "a compiled query selects model instances"
        self.model: type[Model] = klass_info["model"]
        fields = klass_info["select_fields"]
        self.start, self.end = fields[0], fields[-1] + 1
        self.init_list = [f[0].target.attname for f in compiler.select[self.start : self.end]]
        self.annotation_col_map = dict(compiler.annotation_col_map or {})
        self.has_related = bool(klass_info.get("related_klass_infos"))

    def fetch(self, **values: Any) -> list[Any]:
        """The rows for ``values`` (one per slot) as model instances, as iterating the queryset gives them."""
        if len(values) != len(set(self.slots.values())):
            raise TypeError(f"values for {sorted(set(self.slots.values()))} expected, got {sorted(values)}")
        params = list(self.params)
        for i, name in self.slots.items():
            params[i] = values[name]
        connection = connections[self.db]
        with connection.cursor() as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()
        compiler = self.compiler
        # New populators per call: they are cheap, and keep no state between threads.
        populators = get_related_populators(compiler.klass_info, compiler.select, self.db) if self.has_related else []
        found = []
        for row in compiler.results_iter([rows]):
            obj = self.model.from_db(self.db, self.init_list, row[self.start : self.end])
            for populator in populators:
                populator.populate(row, obj)
            for attr, position in self.annotation_col_map.items():
                setattr(obj, attr, row[position])
            found.append(obj)
        return found


_lock = threading.Lock()
_cache: OrderedDict[Hashable, CompiledQuery] = OrderedDict()


def compiled(key: Hashable, slots: list[Slot], build: Callable[..., QuerySet[Any]]) -> CompiledQuery:
    """The compiled query for ``key``, made by ``build(**stand_ins)`` the first time (one value
    per slot, by name) and kept (the least recently used beyond :data:`MAX_ENTRIES` dropped).

    ``key`` must capture everything, other than the slots, that shapes the query's SQL.
    """
    full_key = (key, tuple(slots))
    with _lock:
        found = _cache.get(full_key)
        if found is not None:
            _cache.move_to_end(full_key)
    if found is not None and found.vendor == connections[found.db].vendor:
        return found
    token = secrets.token_hex(6)
    stand_ins = {slot.name: slot.stand_in(token) for slot in slots}
    made = CompiledQuery(build(**stand_ins), stand_ins)
    with _lock:
        _cache[full_key] = made
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return made


def compiled_forget() -> None:
    """Drop every compiled query (the tests, after changing what a key does not capture)."""
    with _lock:
        _cache.clear()
