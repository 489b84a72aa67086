"""Seals of the audit chains in the giornale, time-stamped by the TSA: what they
catch that the chains alone cannot (a cut tail, a rewrite by whoever holds the
key too), and what the verifier names."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import shutil
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from archive.reporting import signing
from kernel import audit, tasknames
from kernel.audit import audit_chains_forget, audit_record, audit_verify
from kernel.models import AuditEvent
from pacs.celery import app as celery_app
from preservation import audit_seal, journal, tasks, timestamp
from preservation.models import JournalEntry
from tests.audit_helpers import audit_guards_lifted


def write(n: int) -> list[AuditEvent]:
    return [audit_record(action=f"test.{i}", system="pytest") for i in range(n)]


def two_chains() -> tuple[list[AuditEvent], list[AuditEvent]]:
    first = write(3)
    audit_chains_forget()  # as a second process would: a chain of its own
    second = write(2)
    assert first[0].chain != second[0].chain
    return first, second


def test_a_seal_records_every_chain_head_time_stamped_in_the_giornale(officer: object, tmp_path: Path) -> None:
    first, second = two_chains()
    entry = audit_seal.audit_seal()
    assert (entry.event, entry.action, entry.outcome) == ("seal", "audit.seal", "success")
    document = entry.detail["seal"]
    heads = {(h["chain"], h["seq"], h["hash"], h["event"]) for h in document["chains"]}
    assert heads == {
        (first[0].chain, 3, first[2].hash, first[2].pk),
        (second[0].chain, 2, second[1].hash, second[1].pk),
    }
    data = audit_seal.seal_bytes(document)
    assert entry.detail["sha256"] == hashlib.sha256(data).hexdigest()
    tsr = base64.b64decode(entry.detail["tsr"])
    check = timestamp.timestamp_verify(data=data, tsr=tsr, ca_pem=signing.ca_certificate_pem())
    assert check.ok, check.reason
    # The time stamp also verifies with OpenSSL, without the PACS.
    (tmp_path / "seal.json").write_bytes(data)
    (tmp_path / "seal.tsr").write_bytes(tsr)
    cmd = [
        shutil.which("openssl") or "openssl",
        "ts",
        "-verify",
        "-data",
        str(tmp_path / "seal.json"),
        "-in",
        str(tmp_path / "seal.tsr"),
        "-CAfile",
        str(Path(django_settings.PACS_SIGNING_DIR) / "ca.pem"),
        "-untrusted",
        str(timestamp.tsa_paths()[1]),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert "Verification: OK" in done.stdout, done.stdout + done.stderr
    assert journal.journal_verify().ok
    report = audit_verify()
    assert report.ok, [str(p) for p in report.problems]
    assert (report.seals_checked, report.seals, report.unsealed) == (True, 1, 0)


def test_a_tail_removed_after_a_seal_is_named(officer: object) -> None:
    rows = write(5)
    seal = audit_seal.audit_seal()
    with audit_guards_lifted(connection), connection.cursor() as cursor:
        cursor.execute("DELETE FROM archive_auditevent WHERE id IN (%s, %s)", [rows[3].pk, rows[4].pk])
    # Without the seal the chain alone looks whole: it just ends at seq 3.
    [problem] = audit_verify().problems
    assert (problem.chain, problem.seq, problem.event_id) == (rows[0].chain, 5, rows[4].pk)
    assert problem.seal.startswith(f"seal #{seal.pk} of the giornale")
    assert f"the chain now ends at seq 3 (event #{rows[2].pk}): its tail was removed" in problem.reason
    err = StringIO()
    with pytest.raises(CommandError):
        call_command("verify_audit_chain", stdout=StringIO(), stderr=err)
    assert f"seal #{seal.pk} of the giornale" in err.getvalue() and f"chain {rows[0].chain}, seq 5" in err.getvalue()


def test_a_whole_chain_removed_after_a_seal_is_named(officer: object) -> None:
    first, second = two_chains()
    audit_seal.audit_seal()
    with audit_guards_lifted(connection), connection.cursor() as cursor:
        cursor.execute("DELETE FROM archive_auditevent WHERE chain = %s", [second[0].chain])
    [problem] = audit_verify().problems
    assert problem.chain == second[0].chain and "the chain is gone" in problem.reason


def test_a_rewrite_by_someone_holding_the_key_too_is_caught_by_the_seal(officer: object) -> None:
    rows = write(4)
    audit_seal.audit_seal()
    key = audit.audit_key()
    with audit_guards_lifted(connection):
        prev = rows[0].hash
        for row in rows[1:]:
            if row is rows[1]:
                row.action = "test.rewritten"
            row.prev_hash = prev
            row.hash = audit.row_mac(row, key.secret)
            AuditEvent.objects.filter(pk=row.pk).update(action=row.action, prev_hash=row.prev_hash, hash=row.hash)
            prev = row.hash
    [problem] = audit_verify().problems  # every row verifies: only the seal knows
    assert (problem.seq, problem.event_id) == (4, rows[3].pk)
    assert "differs from the sealed one" in problem.reason


def test_a_removed_seal_is_named_by_the_next(officer: object) -> None:
    write(1)
    audit_seal.audit_seal()
    middle = audit_seal.audit_seal()
    last = audit_seal.audit_seal()
    with audit_guards_lifted(connection):
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM preservation_journalentry WHERE id = %s", [middle.pk])
        # ...and the giornale re-hashed around it, as its unkeyed chain allows.
        prev = audit.GENESIS_HASH
        for entry in JournalEntry.objects.order_by("id"):
            entry.prev_hash = prev
            entry.hash = journal._row_hash(entry)
            JournalEntry.objects.filter(pk=entry.pk).update(prev_hash=entry.prev_hash, hash=entry.hash)
            prev = entry.hash
    assert journal.journal_verify().ok
    [problem] = audit_verify().problems
    assert problem.seal.startswith(f"seal #{last.pk} ") and "a seal removed?" in problem.reason


def test_a_seal_made_afterwards_is_named_by_its_time_stamp(officer: object) -> None:
    """Whoever holds the database writes a seal dated two hours ago: the TSA stamps it now."""
    rows = write(1)
    previous = audit_seal.audit_seal()
    document = {
        "kind": audit_seal.SEAL_KIND,
        "version": 1,
        "at": (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat(),
        "previous": previous.detail["sha256"],
        "since": "",
        "chains": [{"chain": rows[0].chain, "seq": 1, "hash": rows[0].hash, "event": rows[0].pk, "key_id": ""}],
    }
    data = audit_seal.seal_bytes(document)
    forged = journal.journal_record(
        event=JournalEntry.Event.SEAL,
        action=audit_seal.ACTION,
        detail={
            "seal": document,
            "sha256": hashlib.sha256(data).hexdigest(),
            "tsr": base64.b64encode(timestamp.timestamp_obtain(data)).decode(),
        },
    )
    [problem] = audit_verify().problems
    assert problem.seal.startswith(f"seal #{forged.pk} ") and "stamped afterwards?" in problem.reason


def test_a_later_seal_covers_the_chains_that_changed(officer: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_seal, "LOOKBACK", dt.timedelta(0))
    first, second = two_chains()
    audit_seal.audit_seal()
    [more] = write(1)
    assert more.chain == second[0].chain
    later = audit_seal.audit_seal()
    assert [(h["chain"], h["seq"]) for h in later.detail["seal"]["chains"]] == [(second[0].chain, 3)]
    assert audit_verify().ok


def test_legacy_rows_are_sealed_by_the_first_seal(officer: object) -> None:
    prev = audit.GENESIS_HASH
    with audit_guards_lifted(connection):
        for i in range(2):
            event = AuditEvent(at=audit.timezone.now(), action=f"legacy.{i}", outcome="success", prev_hash=prev)
            event.hash = audit.legacy_row_hash(event)
            event.save()
            prev = event.hash
    write(1)
    seal = audit_seal.audit_seal()
    legacy = [h for h in seal.detail["seal"]["chains"] if h["chain"] == ""]
    assert [(h["seq"], h["hash"]) for h in legacy] == [(2, prev)]
    assert audit_verify().ok
    with audit_guards_lifted(connection), connection.cursor() as cursor:
        cursor.execute("DELETE FROM archive_auditevent WHERE chain = '' AND hash = %s", [prev])
    [problem] = audit_verify().problems
    assert problem.chain == "" and "sealed with 2 rows" in problem.reason


def test_without_a_time_stamp_authority_the_seal_is_kept_and_noted(db: None, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_TSA_URL = ""
    settings.PACS_TSA_DIR = tmp_path / "no-tsa"
    write(2)
    entry = audit_seal.audit_seal()
    assert entry.outcome == "warning" and entry.detail["tsr"] == "" and entry.detail["timestamp_error"]
    report = audit_verify()
    assert report.ok and report.seals == 1
    assert any("not time-stamped" in note for note in report.notes)


def test_celery_beat_seals_every_period(db: None, officer: object) -> None:
    entry = django_settings.CELERY_BEAT_SCHEDULE["preservation-audit-seal"]
    assert entry["task"] == tasknames.AUDIT_SEAL in celery_app.tasks
    assert entry["schedule"] == django_settings.PACS_AUDIT_SEAL_SECONDS
    write(1)
    pk = tasks.audit_seal.apply().get()
    assert JournalEntry.objects.get(pk=pk).event == "seal"


def test_the_command_seals_by_hand(officer: object) -> None:
    write(1)
    out = StringIO()
    call_command("preservation", "seal-audit", stdout=out)
    assert "1 chains" in out.getvalue() and "not time-stamped" not in out.getvalue()


@pytest.mark.parametrize(
    "sql",
    ["DELETE FROM preservation_journalentry", "UPDATE preservation_journalentry SET action = 'x'"],
)
def test_the_giornale_refuses_changes(officer: object, sql: str) -> None:
    write(1)
    audit_seal.audit_seal()
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    if connection.vendor == "postgresql":
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("TRUNCATE preservation_journalentry")
    assert JournalEntry.objects.filter(event="seal").count() == 1
