"""The one hash chain of the audit log and the giornale: the bytes it hashes are
pinned (rows already in databases must keep verifying), and the walk names each
kind of break."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass

from kernel import audit, hashchain
from kernel.hashchain import GENESIS_HASH, ChainWalk, chain_verify, link_hash
from kernel.models import AuditEvent
from preservation import journal
from preservation.models import JournalEntry


def test_the_bytes_hashed_are_those_the_existing_rows_were_written_with() -> None:
    content = {"b": "città", "a": 1, "detail": {"z": [1, 2], "y": None}}
    data = '{"a":1,"b":"città","detail":{"y":null,"z":[1,2]},"prev_hash":"' + "0" * 64 + '"}'
    assert hashchain.canonical({**content, "prev_hash": GENESIS_HASH}) == data.encode()
    assert link_hash(content, prev_hash=GENESIS_HASH) == hashlib.sha256(data.encode()).hexdigest()
    key = b"k" * 32
    assert link_hash(content, prev_hash=GENESIS_HASH, key=key) == hmac.new(key, data.encode(), "sha256").hexdigest()


@dataclass
class Row:
    pk: int
    text: str
    prev_hash: str = ""
    hash: str = ""
    chain: str = ""
    seq: int = 0


def row_hash(row: Row) -> str:
    return link_hash({"text": row.text}, prev_hash=row.prev_hash)


def chained(texts: list[str], chain: str = "") -> list[Row]:
    rows, prev = [], GENESIS_HASH
    for i, text in enumerate(texts, start=1):
        row = Row(pk=i, text=text, prev_hash=prev, chain=chain, seq=i)
        row.hash = row_hash(row)
        rows.append(row)
        prev = row.hash
    return rows


def test_a_whole_chain_verifies() -> None:
    assert chain_verify(chained(["a", "b", "c"]), row_hash) == hashchain.ChainReport(3, None)


def test_a_changed_row_and_a_removed_row_are_named() -> None:
    rows = chained(["a", "b", "c"])
    rows[1].text = "forged"
    report = chain_verify(rows, row_hash)
    assert (report.checked, report.broken_at) == (1, 2) and "content" in report.reason
    rows = chained(["a", "b", "c"])
    del rows[1]
    report = chain_verify(rows, row_hash)
    assert (report.checked, report.broken_at) == (1, 3) and "removed" in report.reason


def test_the_walk_goes_on_past_a_break_and_numbers_gaps_per_chain() -> None:
    first, second = chained(["a", "b", "c", "d"], "one"), chained(["x", "y"], "two")
    del first[1]  # seq 2 removed
    second[1].text = "forged"
    walk = ChainWalk(row_hash, chain_of=lambda r: r.chain, seq_of=lambda r: r.seq)
    links = [walk.step(row) for row in [*first, *second]]
    assert [link.starts_chain for link in links] == [True, False, False, True, False]
    assert [link.missing for link in links] == [None, (2, 2), None, None, None]
    assert not links[1].prev_ok and links[1].previous is first[0] and links[1].hash_ok
    assert links[2].ok  # the walk goes on from the row's stored hash
    assert links[4].prev_ok and links[4].hash_ok is False


def test_a_row_that_cannot_be_recomputed_is_neither_good_nor_bad() -> None:
    [row] = chained(["a"])
    link = ChainWalk(lambda r: None).step(row)
    assert link.prev_ok and link.hash_ok is None and not link.ok


def test_a_hash_that_is_not_ascii_is_a_mismatch_not_an_error() -> None:
    [row] = chained(["a"])
    row.hash = "è" * 64
    assert chain_verify([row], row_hash).broken_at == 1


def test_the_audit_rows_and_the_giornale_hash_as_they_always_did() -> None:
    """Hashes computed with the formulas of before kernel.hashchain (commit c37781e):
    every row in every database was written with them."""
    at = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)
    event = AuditEvent(
        at=at,
        username="rossi",
        action="study.view",
        outcome="success",
        patient_id=7,
        study_id=9,
        study_instance_uid="1.2.3",
        source="10.0.0.1",
        detail={"città": "Trieste", "n": 2},
        prev_hash="a" * 64,
        chain="c" * 32,
        seq=3,
        key_id="k" * 16,
    )
    assert audit.row_mac(event, b"s" * 32) == "99e49e71867c2231a514294dc183c7eedb4950a8345ec92f4bbe89be21c81130"
    assert audit.legacy_row_hash(event) == "7cc45fc9fb86179af02a478745ba85c6ec326ccac37f33523b9b50b4e436e5f0"
    entry = JournalEntry(
        at=at,
        event="package",
        action="package.archive",
        outcome="success",
        object_id="PdA-1",
        system="preservation.package_build",
        detail={"è": "sì", "files": 17},
        prev_hash="b" * 64,
    )
    assert journal._row_hash(entry) == "8bee97cefb1662c4314bfafe175b60fb55b52fa8336c36d7fa6cfdd7ca9dbcae"
