"""Structured logs (kernel.logs): every line of a request, a Celery task and a DICOM
association carries that work's id, and nothing else's.

Real things: a request through the whole middleware stack with the production
formatter (JSON), a task run by a real worker process, associations from
pynetdicom clients to a real listener process over loopback, two at the same time."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at run time

from archive.sample_data import PatientInfo, write_study
from kernel import logs, tasknames
from tests.conftest import REPO, wait_until, worker_process
from tests.dicom_client import send_files


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a process's output (its own stdout lines are plain text)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the root logger writes, through the production formatter (JSON)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("json"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_sane_ids_only() -> None:
    assert logs.sane_id("3f2b9c1e-4a5d-4e6f-8a9b-0c1d2e3f4a5b") == "3f2b9c1e-4a5d-4e6f-8a9b-0c1d2e3f4a5b"
    assert logs.sane_id("lb.7:abc_DEF") == "lb.7:abc_DEF"
    for bad in ("", "a b", 'x"}{"forged":1', "-leading", "é", "a" * 129, "x\nlevel=error"):
        assert logs.sane_id(bad) is None, bad


@pytest.mark.django_db
def test_every_line_of_a_request_carries_its_id_and_the_header_echoes_it(captured: io.StringIO) -> None:
    client = Client()
    # A page that is not there: Django's own warning and the access line, two loggers.
    response = client.get("/no-such-page/", HTTP_X_REQUEST_ID="proxy-4711")
    assert response.status_code == 404
    assert response["X-Request-ID"] == "proxy-4711"
    lines = _json_lines(captured.getvalue())
    assert {line["logger"] for line in lines} >= {"django.request", "pacs.request"}, lines
    assert all(line.get("request_id") == "proxy-4711" for line in lines), lines
    access = next(line for line in lines if line["logger"] == "pacs.request")
    assert access["event"].startswith("GET /no-such-page/ 404 ")

    # An id that is not a sane token is replaced, not logged; and the next request has its own.
    captured.truncate(0)
    captured.seek(0)
    response = client.get("/no-such-page/?PatientName=ROSSI", HTTP_X_REQUEST_ID='x"}\n{"forged": 1')
    made = response["X-Request-ID"]
    assert logs.sane_id(made) == made and made != "proxy-4711"
    lines = _json_lines(captured.getvalue())
    assert lines and all(line.get("request_id") == made for line in lines), lines
    assert "forged" not in captured.getvalue()
    assert "ROSSI" not in captured.getvalue()  # the access line has the path, not the query
    assert logs.ids_bound() == {}  # nothing left bound after the request


@pytest.mark.django_db(transaction=True)
def test_every_line_of_a_celery_task_carries_the_task_id(process_env: dict[str, str], tmp_path: Path) -> None:
    from pacs.celery import app

    log = tmp_path / "worker.log"
    env = {**process_env, "PACS_LOG_FORMAT": "json"}
    with worker_process(env, log, list(settings.PACS_TASK_QUEUES.values())):
        before = len(_json_lines(log.read_text()))
        # A recall into a facility that does not exist: the task logs a warning of its own.
        # Queued while a request is being served: its lines name the request that queued it.
        logs.ids_bind(request_id="req-that-queued")
        try:
            results = [
                app.send_task(tasknames.STUDIES_RECALL, args=[[], 999_000 + n, "2026-12-31T00:00:00"]) for n in (1, 2)
            ]
        finally:
            logs.ids_clear()
        wait_until(lambda: log.read_text().count("succeeded in") >= 2, what="both tasks logged as done")
    lines = _json_lines(log.read_text())[before:]
    for n, result in enumerate(results, start=1):
        own = [line for line in lines if line.get("task_id") == result.id]
        events = " | ".join(line["event"] for line in own)
        assert f"recall into facility {999_000 + n} skipped" in events, events
        assert "received" in events and "succeeded" in events, events
        # The task's own line and the worker's lines about it: one id, the task's.
        assert any(line["logger"] == "archive.tasks" for line in own)
        task_line = next(line for line in own if line["logger"] == "archive.tasks")
        assert task_line["origin_request_id"] == "req-that-queued" and "request_id" not in task_line
    during = [line for line in lines if "recall into facility" in line["event"] or "Task " in line["event"]]
    assert during and all(line.get("task_id") in {r.id for r in results} for line in during), during


def _associate(port: int, calling_ae: str, called_ae: str = "TSCAT_PACS") -> Any:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called_ae)


@pytest.mark.django_db(transaction=True)
def test_every_line_of_an_association_carries_its_id_two_at_once_have_two(
    region: Any, start_listener_process: Any, tmp_path: Path
) -> None:
    # pynetdicom's own lines (association and DUL threads) at DEBUG: many lines, several threads.
    listener = start_listener_process(env={"PACS_LOG_FORMAT": "json", "PYNETDICOM_LOG_LEVEL": "DEBUG"})
    before = len(listener.log().splitlines())
    studies = {
        ae: write_study(
            tmp_path / ae,
            patient=PatientInfo(patient_id=f"MRN-{ae}", name="Rossi^Mario", birth_date="19700101", sex="M"),
            instances_per_series=3,
        )
        for ae in ("STORESCU", "MODALITY")
    }
    barrier = threading.Barrier(2)

    def send(ae: str) -> None:
        barrier.wait()
        report = send_files(listener.port, studies[ae], calling_ae=ae)
        assert report.established and len(report.acknowledged()) == 3

    threads = [threading.Thread(target=send, args=(ae,)) for ae in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # And one the policy refuses: its rejection line has an id too.
    assert _associate(listener.port, "NOBODY").is_rejected
    wait_until(lambda: listener.log().count('"association from') >= 2, what="both associations' summary lines")
    wait_until(lambda: "rejecting association" in listener.log(), what="the rejection line")
    text = "\n".join(listener.log().splitlines()[before:])
    listener.stop()

    during = _json_lines(text)
    assert during and all(line.get("association_id") for line in during), [
        line for line in during if not line.get("association_id")
    ]
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in during:
        by_id.setdefault(line["association_id"], []).append(line)
    summaries = {
        line["association_id"]: line["event"] for line in during if line["event"].startswith("association from")
    }
    assert len(summaries) == 2, summaries
    callers = set()
    for association_id, summary in summaries.items():
        callers.add("STORESCU" if " STORESCU " in summary else "MODALITY")
        own = by_id[association_id]
        # Lines from the association's thread and from its DUL's.
        assert len({line["thread"] for line in own}) >= 2, {line["thread"] for line in own}
        assert "3 instances stored" in summary
    assert callers == {"STORESCU", "MODALITY"}
    rejected = [line for line in during if line["event"].startswith("rejecting association")]
    assert len(rejected) == 1 and rejected[0]["association_id"] not in summaries
    assert len(by_id) == 3, sorted(by_id)


@pytest.mark.django_db(transaction=True)
def test_a_c_move_sub_association_logs_with_the_id_of_the_association_that_asked(
    region: Any, start_listener_process: Any, tmp_path: Path
) -> None:
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pynetdicom import evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

    from archive.models import RemoteNode

    received: list[str] = []
    destination = AE(ae_title="DEST")
    destination.supported_contexts = StoragePresentationContexts
    server = destination.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append("x") or 0x0000)],
    )
    try:
        RemoteNode.objects.create(
            facility=region.facility,
            ae_title="DEST",
            host="127.0.0.1",
            port=server.server_address[1],
            is_retrieve_destination=True,
        )
        RemoteNode.objects.create(
            facility=region.facility, ae_title="WS", host="127.0.0.1", port=104, can_query=True, can_retrieve=True
        )
        listener = start_listener_process(env={"PACS_LOG_FORMAT": "json", "PYNETDICOM_LOG_LEVEL": "DEBUG"})
        patient = PatientInfo(patient_id="MRN-MOVE", name="Rossi^Mario", birth_date="19700101", sex="M")
        files = write_study(tmp_path / "move", patient=patient, instances_per_series=2)
        assert len(send_files(listener.port, files, calling_ae="STORESCU").acknowledged()) == 2
        wait_until(lambda: '"association from' in listener.log(), what="the C-STORE's summary line")
        before = len(listener.log().splitlines())

        ae = AE(ae_title="WS")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="TSCAT_PACS")
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        move = StudyRootQueryRetrieveInformationModelMove
        statuses = [status.Status for status, _ in assoc.send_c_move(query, "DEST", move)]
        assoc.release()
        assert statuses[-1] == 0x0000 and len(received) == 2
        wait_until(lambda: listener.log().count('"association from') >= 2, what="the C-MOVE's summary line")
        during = _json_lines("\n".join(listener.log().splitlines()[before:]))
        listener.stop()
    finally:
        server.shutdown()

    assert during and all(line.get("association_id") for line in during), [
        line for line in during if not line.get("association_id")
    ]
    (move_id,) = {line["association_id"] for line in during if line["event"].startswith("association from")}
    # The sub-association's own threads (pynetdicom's requestor and its DUL) write under the same id.
    requesting = [line for line in during if line["event"].startswith("Requesting Association")]
    assert requesting and all(line["association_id"] == move_id for line in requesting)
    threads = {line["thread"] for line in during if line["association_id"] == move_id}
    # The C-MOVE's association thread and two DUL threads: its own and the sub-association's.
    assert len(threads) >= 3, threads


def test_an_unknown_log_format_stops_start_up() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO,
        env={**os.environ, "PACS_LOG_FORMAT": "xml"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "PACS_LOG_FORMAT='xml' is not one of console, json" in done.stderr
