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

import datetime as dt
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators  # type: ignore[attr-defined]  # internal: how QuerySet.__iter__ fills select_related objects

MAX_ENTRIES = 512


@dataclass(frozen=True)
class Slot:
    """A value that changes between runs of a compiled query: ``str``, ``int`` or an aware ``datetime``."""

    name: str
    kind: type = str

    def stand_in(self, token: str, index: int) -> Any:
        """The value that stands for this slot, the ``index``-th, while the query is compiled."""
        number = int(token, 16) + 7919 * index
        if self.kind is int:
            # Negative, never a key a row has, and within a 32-bit integer column's range (Django
            # compiles a value outside it to an empty result).
            return -1_000_000_000 - number % 1_000_000_000
        if self.kind is dt.datetime:
            # A moment no row records, told apart by its microseconds and seconds.
            return dt.datetime(1111, 1, 1, 1, number % 60, (number // 60) % 60, number % 999_983, tzinfo=dt.UTC)
        return f"\x1f{self.name}:{token}\x1f"


def _adapters(db: str) -> list[Callable[[Any], Any]]:
    """How a lookup's value may reach the parameters: as given, or adapted by the backend
    (SQLite passes a ``DateTimeField``'s value as text)."""
    ops = connections[db].ops
    return [lambda v: v, ops.adapt_datetimefield_value]


class CompiledQuery:
    """One query's SQL, its parameters (some of them slots) and the compiler that made them."""

    def __init__(self, queryset: QuerySet[Any], stand_ins: dict[str, Any]) -> None:
        self.db = queryset.db
        self.vendor = connections[self.db].vendor
        compiler = queryset.query.get_compiler(using=self.db)
        sql, params = compiler.as_sql()
        where: dict[int, str] = {}
        self.adapt: dict[int, Callable[[Any], Any]] = {}
        for i, value in enumerate(params):
            for name, stand_in in stand_ins.items():
                for adapt in _adapters(self.db) if isinstance(stand_in, dt.datetime) else [lambda v: v]:
                    seen = adapt(stand_in)
                    if type(value) is type(seen) and value == seen:
                        where[i] = name
                        self.adapt[i] = adapt
        missing = set(stand_ins) - set(where.values())
        if (
            missing
            or len(set(map(str, stand_ins.values()))) < len(stand_ins)
            or any(str(s) in sql for s in stand_ins.values())
        ):
            raise ValueError(f"slots {sorted(missing)} are not parameters of the compiled query")
        self.sql = sql
        self.params = tuple(params)
        self.slots = where
        self.compiler = compiler
        klass_info = compiler.klass_info
        self.model: type[Model] | None = klass_info["model"] if klass_info else None
        if klass_info:
            fields = klass_info["select_fields"]
            self.start, self.end = fields[0], fields[-1] + 1
            self.init_list = [f[0].target.attname for f in compiler.select[self.start : self.end]]
            self.has_related = bool(klass_info.get("related_klass_infos"))
        self.annotation_col_map = dict(compiler.annotation_col_map or {})
        # What results_iter works out on every call, worked out once: each column's converters.
        self.fields = [s[0] for s in compiler.select[0 : compiler.col_count]]
        self.converters = compiler.get_converters(self.fields)
        self.composite = compiler.has_composite_fields(self.fields)

    def rows(self, **values: Any) -> list[tuple[Any, ...]]:
        """The rows for ``values`` (one per slot), each value converted as Django converts it
        (a ``values_list`` query's tuples, when the query selects no model)."""
        if set(values) != set(self.slots.values()):
            raise TypeError(f"values for {sorted(set(self.slots.values()))} expected, got {sorted(values)}")
        params = list(self.params)
        for i, name in self.slots.items():
            params[i] = self.adapt[i](values[name])
        with connections[self.db].cursor() as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()
        # SQLCompiler.results_iter's steps, with the converters worked out at compile time.
        converted: Iterable[Any] = rows
        if self.converters:
            converted = self.compiler.apply_converters(converted, self.converters)
        if self.composite:
            converted = self.compiler.composite_fields_to_tuples(converted, self.fields)
        return [tuple(row) for row in converted]

    def fetch(self, **values: Any) -> list[Any]:
        """The rows for ``values`` (one per slot) as model instances, as iterating the queryset gives them."""
        if self.model is None:
            raise TypeError("this compiled query selects no model: use rows()")
        compiler = self.compiler
        # New populators per call: they are cheap, and keep no state between threads.
        populators = get_related_populators(compiler.klass_info, compiler.select, self.db) if self.has_related else []
        found = []
        for row in self.rows(**values):
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
    stand_ins = {slot.name: slot.stand_in(token, i) for i, slot in enumerate(slots)}
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
