"""Hash chains: each row carries the previous row's hash and a hash of its own
content together with that link, so that a row changed, removed or re-linked shows.

Two logs are chained this way: the audit log (:mod:`kernel.audit`: HMAC-SHA256
under a key kept outside the database, one chain per writer, numbered; its rows
from before keying in plain SHA-256) and the giornale della conservazione
(``preservation.journal``: plain SHA-256, one chain in id order). What each
hashes is its own (the fields it names); how is fixed here, once:
:func:`link_hash` over :func:`canonical`, and the walk of :class:`ChainWalk`.

Both are what every row already in a database was written with: the bytes
(sorted keys, no spaces, UTF-8 unescaped, anything not JSON as ``str``), the
previous hash inside them as ``prev_hash``, the genesis hash. Changing any of
them makes every chain written so far fail verification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64


def canonical(payload: Mapping[str, Any]) -> bytes:
    """The bytes a row's hash is computed over: JSON with sorted keys and no spaces,
    non-ASCII as UTF-8 (not escaped), anything JSON has no type for as ``str``."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def digest(payload: Mapping[str, Any], *, key: bytes | None = None) -> str:
    """SHA-256 of ``canonical(payload)``, or its HMAC-SHA256 under ``key``; hexadecimal."""
    data = canonical(payload)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def link_hash(content: Mapping[str, Any], *, prev_hash: str, key: bytes | None = None) -> str:
    """A row's hash: its ``content`` and the previous row's hash (``prev_hash``, the
    genesis hash for a chain's first row), keyed when ``key`` is given."""
    return digest({**content, "prev_hash": prev_hash}, key=key)


def hashes_equal(a: str, b: str) -> bool:
    """Compared in constant time (a keyed hash must not leak how much of a forgery matched);
    as bytes, so that a tampered value that is not ASCII is a mismatch, not an error."""
    return hmac.compare_digest(a.encode(), b.encode())


# --- verification -----------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One row as a walk found it."""

    row: Any
    starts_chain: bool
    previous: Any | None  # the row before it in its chain; None for the chain's first
    prev_ok: bool  # its prev_hash is the previous row's hash (the genesis hash for the first)
    hash_ok: bool | None  # its hash is its content's; None when it cannot be recomputed (a key not held)
    missing: tuple[int, int] | None = None  # numbered rows: the numbers missing before it (first, last)

    @property
    def ok(self) -> bool:
        return self.prev_ok and self.hash_ok is True and self.missing is None


class ChainWalk:
    """A walk along hash chains, one row at a time, in order.

    Each row (with ``prev_hash`` and ``hash``) must name the previous row's stored
    hash, and its own must be what ``row_hash`` recomputes (None: it cannot be,
    e.g. the row's key is not held). The walk goes on after a row that does not
    fit, from its stored hash, so that every break is found, not only the first.

    Parameters
    ----------
    row_hash : callable
        A row's hash recomputed from its content.
    chain_of : callable, optional
        The chain a row belongs to, when the rows of several chains come one
        chain after the other; None: the rows are one chain.
    seq_of : callable, optional
        A row's number in its chain, from 1, when rows are numbered: a gap is
        reported as ``missing``. None: only the links show a removed row.
    """

    def __init__(
        self,
        row_hash: Callable[[Any], str | None],
        *,
        chain_of: Callable[[Any], str] | None = None,
        seq_of: Callable[[Any], int] | None = None,
    ) -> None:
        self.row_hash = row_hash
        self.chain_of = chain_of
        self.seq_of = seq_of
        self.chain: str | None = None
        self.previous: Any | None = None
        self.seq = 0

    def step(self, row: Any) -> Link:
        chain = self.chain_of(row) if self.chain_of is not None else ""
        starts = chain != self.chain
        if starts:
            self.chain, self.previous, self.seq = chain, None, 0
        previous = self.previous
        missing = None
        if self.seq_of is not None:
            seq = self.seq_of(row)
            if seq != self.seq + 1:
                missing = (self.seq + 1, seq - 1)
            self.seq = seq
        expected = previous.hash if previous is not None else GENESIS_HASH
        recomputed = self.row_hash(row)
        link = Link(
            row=row,
            starts_chain=starts,
            previous=previous,
            prev_ok=row.prev_hash == expected,
            hash_ok=None if recomputed is None else hashes_equal(recomputed, row.hash),
            missing=missing,
        )
        self.previous = row
        return link


@dataclass
class ChainReport:
    checked: int
    broken_at: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def chain_verify(rows: Iterable[Any], row_hash: Callable[[Any], str]) -> ChainReport:
    """Walk one unnumbered chain in order (``rows`` with ``pk``, ``prev_hash`` and
    ``hash``) and report the first row that does not fit: the giornale's check."""
    walk = ChainWalk(row_hash)
    checked = 0
    for row in rows:
        link = walk.step(row)
        if not link.prev_ok:
            return ChainReport(checked, row.pk, "its prev_hash does not match the previous row (a row removed?)")
        if not link.hash_ok:
            return ChainReport(checked, row.pk, "its content does not match its hash (a row changed?)")
        checked += 1
    return ChainReport(checked, None)
