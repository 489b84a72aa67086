"""PostgreSQL's plan of a statement, for the tests that prove a query reads only the rows it
needs at a region's or an archive's size (no sequential scan of a growing table, few buffers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.db import connection


def plan_of(sql: str) -> dict[str, Any]:
    """The root node of ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` of ``sql``, run on the test database."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
        row = cursor.fetchone()
    assert row is not None
    raw = row[0]
    plan: dict[str, Any] = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    return plan


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``node`` and every node under it."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def plan_buffers(plan: dict[str, Any]) -> int:
    """The shared buffers the whole plan touched (hit or read)."""
    return int(plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0))
