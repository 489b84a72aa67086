"""The audit log as evidence: keyed per-writer chains, what the verifier names when
rows are removed, changed or re-linked, the database guards, the key, and the
patients a search returned.

The seals (giornale, time stamps) are in ``tests/preservation/test_audit_seal.py``;
writers in several processes in ``tests/archive/test_audit_processes.py``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.core.management.base import SystemCheckError
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from archive.checks import check_audit_key, check_audit_key_deploy
from archive.models import Patient
from kernel import audit
from kernel.audit import GENESIS_HASH, audit_chains_forget, audit_record, audit_verify
from kernel.models import AuditEvent, AuditEventPatient
from preservation import audit_seal
from tests.audit_helpers import audit_guards_lifted


def chain_rows(chain: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(chain=chain).order_by("seq"))


def write(n: int, **kwargs: object) -> list[AuditEvent]:
    return [audit_record(action=f"test.{i}", system="pytest", **kwargs) for i in range(n)]  # type: ignore[arg-type]


def problems(report: audit.AuditReport) -> list[str]:
    return [str(p) for p in report.problems]


# --- chains ---------------------------------------------------------------------------


def test_events_of_one_writer_form_a_keyed_chain(db: None) -> None:
    first, second = write(2)
    assert first.chain == second.chain and len(first.chain) == 32
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
    key = audit.audit_key()
    assert first.key_id == key.id
    # Keyed: the unkeyed SHA-256 an intruder could recompute is not what is stored.
    assert first.hash == audit.row_mac(first, key.secret) != audit.legacy_row_hash(first)
    assert first.hash != audit.row_mac(first, b"x" * 32)
    report = audit_verify()
    assert report.ok, problems(report)
    assert (report.events, report.chains, report.legacy) == (2, 1, 0)


def test_a_rolled_back_transaction_ends_its_chain_and_the_next_event_starts_another(db: None) -> None:
    [kept] = write(1)
    with pytest.raises(RuntimeError), transaction.atomic():
        write(2)
        raise RuntimeError("the request failed")
    [after] = write(1)
    # The rolled-back rows never existed: continuing the chain would have
    # linked onto them. A new chain starts instead; both verify.
    assert after.chain != kept.chain and after.seq == 1
    report = audit_verify()
    assert report.ok, problems(report)
    assert report.chains == 2


def test_a_rolled_back_savepoint_ends_its_chain_too(db: None) -> None:
    with transaction.atomic():
        [outer] = write(1)
        try:
            with transaction.atomic():
                write(1)
                raise RuntimeError
        except RuntimeError:
            pass
        [after] = write(1)
    assert after.chain != outer.chain
    assert audit_verify().ok


def test_a_committed_chain_is_reused_by_the_next_event(transactional_db: None) -> None:
    first, second = write(2)
    assert second.chain == first.chain and second.seq == 2
    assert audit_verify().ok


def test_an_event_outside_a_transaction_is_one_insert_that_commits_by_itself(transactional_db: None) -> None:
    with CaptureQueriesContext(connection) as queries:
        first, second = write(2)
    # No BEGIN and COMMIT around each (Django logs them): the INSERT is its own transaction.
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT", "INSERT"]
    assert (second.chain, second.seq, second.prev_hash) == (first.chain, 2, first.hash)
    # The chain was given back when the row committed, and the next event goes on with it.
    assert audit._local.lease is None
    [third] = write(1)
    assert (third.chain, third.seq) == (first.chain, 3)
    assert audit_verify().ok


def test_a_search_outside_a_transaction_is_one_statement_with_its_patients(transactional_db: None) -> None:
    a, b = (Patient.objects.create(family_name=n, provisional=True) for n in ("A", "B"))
    with CaptureQueriesContext(connection) as queries:
        first = audit_record(action="dicom.query", ae_title="VIEWER", patients=[a.pk, b.pk, a.pk])
        second = audit_record(action="dicom.query", ae_title="VIEWER", patients=[b.pk])
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    if connection.vendor == "postgresql":
        # The event and its links in one INSERT ... that is its own transaction.
        assert statements == ["WITH", "WITH"]
    else:
        assert statements.count("INSERT") == 4  # SQLite: each event and its links, in a transaction
    assert (second.chain, second.seq, second.prev_hash) == (first.chain, first.seq + 1, first.hash)
    stored = AuditEvent.objects.get(pk=first.pk)
    assert stored.hash == first.hash and stored.detail["patients"] == [a.pk, b.pk]
    links = AuditEventPatient.objects.filter(event__in=[first.pk, second.pk])
    assert sorted(links.values_list("event_id", "patient_id")) == sorted(
        [(first.pk, a.pk), (first.pk, b.pk), (second.pk, b.pk)]
    )
    assert audit._local.lease is None  # the chain given back on its commit
    assert audit_verify().ok


def test_a_search_whose_statement_fails_writes_neither_the_event_nor_its_links(transactional_db: None) -> None:
    [first] = write(1)
    # A wrong idea of the chain's tail: the event's (chain, seq) collides, so the one
    # statement fails as a whole (no link without its event), and the event goes to a new chain.
    audit._local.lease = None
    lease = audit._lease()
    lease.chain.id, lease.chain.seq, lease.chain.hash = first.chain, 0, GENESIS_HASH
    before = AuditEventPatient.objects.count()
    event = audit_record(action="dicom.query", ae_title="VIEWER", patients=[7, 8])
    assert event.chain != first.chain and event.seq == 1
    assert AuditEvent.objects.filter(chain=first.chain).count() == 1
    assert AuditEventPatient.objects.count() == before + 2
    assert set(AuditEventPatient.objects.filter(event=event).values_list("patient_id", flat=True)) == {7, 8}
    assert audit_verify().ok


def test_concurrent_threads_write_separate_chains_that_all_verify(transactional_db: None) -> None:
    threads, per_thread = 6, 15
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                with transaction.atomic():
                    audit_record(action=f"test.thread.{i}", system="pytest")
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=writer) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not errors, errors
    report = audit_verify()
    assert report.ok, problems(report)
    assert report.events == threads * per_thread
    assert 1 <= report.chains <= threads


def test_a_forked_child_does_not_continue_its_parents_chain(db: None) -> None:
    [event] = write(1)
    assert audit._local.lease.chain.id == event.chain
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child touches no database: it only reports what it would write to
        fresh = getattr(audit._local, "lease", None) is None and not audit._pool.free
        os.write(write_end, b"fresh" if fresh else b"inherited")
        os._exit(0)
    os.close(write_end)
    answer = os.read(read, 64)
    os.waitpid(pid, 0)
    assert answer == b"fresh"
    assert audit._local.lease.chain.id == event.chain  # the parent goes on


# --- what the verifier names ----------------------------------------------------------------


def test_deleting_an_event_and_rehashing_the_rest_is_named(db: None) -> None:
    """The issue's tamper test: remove one event with raw SQL, then renumber, re-link and
    re-hash the rest through the ORM as an intruder without the key would."""
    rows = write(5)
    chain, victim = rows[0].chain, rows[2]
    with audit_guards_lifted(connection):
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM archive_auditevent WHERE id = %s", [victim.pk])
        prev = rows[1].hash
        for row in rows[3:]:
            row.seq -= 1
            row.prev_hash = prev
            # Without the key: plain SHA-256, or an HMAC under a guess.
            row.hash = hashlib.sha256(repr((row.pk, prev)).encode()).hexdigest()
            AuditEvent.objects.filter(pk=row.pk).update(seq=row.seq, prev_hash=row.prev_hash, hash=row.hash)
            prev = row.hash
    report = audit_verify()
    assert not report.ok
    first = report.problems[0]
    assert (first.chain, first.seq, first.event_id) == (chain, 3, rows[3].pk)
    assert "does not match its HMAC" in first.reason
    with pytest.raises(CommandError) as failed:
        call_command("verify_audit_chain", stdout=StringIO(), stderr=(err := StringIO()))
    assert f"chain {chain}, seq 3, event #{rows[3].pk}: its content does not match its HMAC" in err.getvalue()
    assert "verification failed" in str(failed.value)


def test_a_removed_event_is_named_by_its_missing_seq(db: None) -> None:
    rows = write(4)
    with audit_guards_lifted(connection), connection.cursor() as cursor:
        cursor.execute("DELETE FROM archive_auditevent WHERE id = %s", [rows[1].pk])
    [problem] = audit_verify().problems
    assert (problem.chain, problem.seq, problem.event_id) == (rows[0].chain, 3, rows[2].pk)
    assert f"seq 2 missing between event #{rows[0].pk} (seq 1)" in problem.reason


def test_the_start_of_a_chain_removed_is_named(db: None) -> None:
    rows = write(3)
    with audit_guards_lifted(connection), connection.cursor() as cursor:
        cursor.execute("DELETE FROM archive_auditevent WHERE id IN (%s, %s)", [rows[0].pk, rows[1].pk])
    [problem] = audit_verify().problems
    assert (problem.seq, problem.event_id) == (3, rows[2].pk) and "seq 1 to 2 missing" in problem.reason


def test_a_changed_row_is_named_and_only_it(db: None) -> None:
    rows = write(4)
    with audit_guards_lifted(connection), connection.cursor() as cursor:
        cursor.execute("UPDATE archive_auditevent SET action = 'test.rewritten' WHERE id = %s", [rows[1].pk])
    [problem] = audit_verify().problems
    assert (problem.chain, problem.seq, problem.event_id) == (rows[0].chain, 2, rows[1].pk)
    assert "does not match its HMAC" in problem.reason


def test_rows_relinked_around_a_removed_one_are_named(db: None) -> None:
    rows = write(4)
    with audit_guards_lifted(connection):
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM archive_auditevent WHERE id = %s", [rows[1].pk])
        AuditEvent.objects.filter(pk=rows[2].pk).update(seq=2)
    report = audit_verify()
    first = report.problems[0]
    assert (first.seq, first.event_id) == (2, rows[2].pk)
    assert "prev_hash is not the HMAC of seq 1" in first.reason


def test_a_rewritten_row_passed_off_as_legacy_is_named(db: None) -> None:
    rows = write(3)
    with audit_guards_lifted(connection):
        row = rows[2]
        row.chain, row.seq, row.key_id = "", None, ""
        row.prev_hash = rows[1].hash
        row.hash = audit.legacy_row_hash(row)
        AuditEvent.objects.filter(pk=row.pk).update(chain="", seq=None, key_id="", hash=row.hash)
    messages = problems(audit_verify())
    assert any(f"event #{row.pk}: an unkeyed (legacy) row after keyed rows began" in m for m in messages)


def test_legacy_rows_verify_as_unkeyed_sha256(db: None) -> None:
    """Rows written before keying stay as they are, verified with their own hash."""
    prev = GENESIS_HASH
    with audit_guards_lifted(connection):
        for i in range(3):
            event = AuditEvent(at=timezone.now(), action=f"legacy.{i}", outcome="success", prev_hash=prev)
            event.hash = audit.legacy_row_hash(event)
            event.save()
            prev = event.hash
    write(2)
    report = audit_verify()
    assert report.ok, problems(report)
    assert (report.events, report.legacy, report.chains) == (5, 3, 2)


def test_an_unknown_key_is_named(db: None, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    old = write(1)[0]
    other = Path(settings.VAR_DIR) / f"rotated-{os.getpid()}.key"
    settings.PACS_AUDIT_KEY_FILE = str(other)
    audit_chains_forget()
    new = write(1)[0]
    assert new.key_id != old.key_id and new.chain != old.chain
    [problem] = audit_verify().problems
    assert problem.event_id == old.pk and "which this verifier does not hold" in problem.reason
    settings.PACS_AUDIT_PREVIOUS_KEY_FILES = [os.environ["PACS_AUDIT_KEY_FILE"]]
    assert audit_verify().ok
    other.unlink()
    audit_chains_forget()


def test_verify_command_reports_an_intact_log(db: None) -> None:
    write(2)
    out = StringIO()
    call_command("verify_audit_chain", stdout=out)
    assert "audit chain intact: 2 events in 1 chains (0 legacy" in out.getvalue()


# --- the database refuses changes --------------------------------------------------------------


def test_the_model_refuses_changes(db: None) -> None:
    [event] = write(1, patients=[1])
    event.action = "test.other"
    with pytest.raises(ValidationError):
        event.save()
    with pytest.raises(ValidationError):
        event.delete()
    with pytest.raises(ValidationError):
        AuditEventPatient.objects.get().delete()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE archive_auditevent SET action = 'tampered'",
        "DELETE FROM archive_auditevent",
        "UPDATE archive_auditeventpatient SET patient_id = 0",
        "DELETE FROM archive_auditeventpatient",
    ],
)
def test_the_database_refuses_update_and_delete(db: None, sql: str) -> None:
    write(1, patients=[7])
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    assert AuditEvent.objects.count() == AuditEventPatient.objects.count() == 1


def test_the_orm_cannot_bypass_the_guards(db: None) -> None:
    write(1)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.update(action="tampered")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.all()._raw_delete(AuditEvent.objects.db)
    assert AuditEvent.objects.get().action == "test.0"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="TRUNCATE is PostgreSQL's (SQLite's DELETE is above)")
@pytest.mark.parametrize("table", ["archive_auditevent", "archive_auditeventpatient"])
def test_postgresql_refuses_truncate(db: None, table: str) -> None:
    write(1, patients=[7])
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table} CASCADE")
    assert AuditEvent.objects.count() == 1


def test_the_database_refuses_a_new_unkeyed_row(db: None) -> None:
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.create(at=timezone.now(), action="forged", outcome="success", hash="f" * 64)


def test_the_guards_are_installed_and_their_absence_is_reported(db: None) -> None:
    assert audit._verify_guards() == []
    with audit_guards_lifted(connection):
        missing = audit_verify().problems
    guards = set(audit.GUARDS[connection.vendor]) | set(audit_seal.GUARDS[connection.vendor])
    assert {p.reason.split()[3] for p in missing} == guards


# --- the key ---------------------------------------------------------------------------------


def test_the_embedded_key_is_generated_once_and_private(db: None, settings) -> None:  # type: ignore[no-untyped-def]
    path = Path(settings.VAR_DIR) / f"keys-{os.getpid()}" / "audit.key"
    settings.PACS_AUDIT_KEY_FILE = str(path)
    key = audit.audit_key()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    assert audit.key_read(path) == key
    assert check_audit_key(None) == []
    path.unlink()
    path.parent.rmdir()


def test_a_named_key_outside_the_var_dir_is_never_invented(db: None, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_AUDIT_KEY_FILE = str(tmp_path / "mounted-secret")
    audit_chains_forget()
    with pytest.raises(audit.AuditKeyError, match="does not exist"):
        audit_record(action="test.no_key", system="pytest")
    assert not (tmp_path / "mounted-secret").exists()
    assert [e.id for e in check_audit_key(None)] == ["archive.E021"]
    (tmp_path / "mounted-secret").write_text("short")
    assert "shorter than 32 bytes" in check_audit_key(None)[0].msg
    (tmp_path / "mounted-secret").write_text("k" * 40)
    os.chmod(tmp_path / "mounted-secret", 0o644)
    assert [e.id for e in check_audit_key(None)] == ["archive.W020"]
    audit_chains_forget()


def test_production_must_name_its_key_file(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_AUDIT_KEY_FILE = ""
    settings.DEBUG = False
    default = {**settings.DATABASES["default"], "ENGINE": "django.db.backends.postgresql"}
    with pytest.warns(UserWarning):
        settings.DATABASES = {**settings.DATABASES, "default": default}
    assert [e.id for e in check_audit_key(None)] == ["archive.W021"]
    # check --deploy: the embedded key (unset, or any file under PACS_VAR_DIR) is an error.
    assert [e.id for e in check_audit_key_deploy(None)] == ["archive.E020"]
    settings.PACS_AUDIT_KEY_FILE = os.environ["PACS_AUDIT_KEY_FILE"]  # under PACS_VAR_DIR
    assert [e.id for e in check_audit_key_deploy(None)] == ["archive.E020"]
    secret = tmp_path / "pacs-audit-key"
    secret.write_text("k" * 64)
    secret.chmod(0o400)
    settings.PACS_AUDIT_KEY_FILE = str(secret)
    assert check_audit_key(None) == check_audit_key_deploy(None) == []


def test_check_deploy_names_the_missing_key(db: None, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_AUDIT_KEY_FILE = ""
    out = StringIO()
    with pytest.raises(SystemCheckError, match="archive.E020"):
        call_command("check", "--deploy", stdout=out, stderr=out)


# --- the patients a search returned --------------------------------------------------------------


def test_a_search_records_the_patients_it_returned_in_an_indexed_table(db: None, settings) -> None:  # type: ignore[no-untyped-def]
    settings.PACS_AUDIT_MAX_PATIENTS = 2
    a, b, c = (Patient.objects.create(family_name=n, provisional=True) for n in ("A", "B", "C"))
    event = audit_record(action="dicom.query", ae_title="VIEWER", patients=[a.pk, a.pk, None, b.pk, c.pk])
    assert event.detail["patients"] == [a.pk, b.pk] and event.detail["patients_total"] == 3
    assert set(AuditEventPatient.objects.filter(event=event).values_list("patient_id", flat=True)) == {a.pk, b.pk}
    assert audit_verify().ok


def test_a_removed_patient_link_is_named(db: None) -> None:
    event = audit_record(action="dicom.query", ae_title="VIEWER", patients=[11, 12])
    with audit_guards_lifted(connection), connection.cursor() as cursor:
        cursor.execute("DELETE FROM archive_auditeventpatient WHERE patient_id = 12")
    [problem] = audit_verify().problems
    assert problem.event_id == event.pk and "patient links differ" in problem.reason
