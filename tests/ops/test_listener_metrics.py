"""The listener's own /metrics (archive.dicomnet.observe): associations open and ended by
facility and result, C-STOREs by outcome, C-FIND durations by level; and, with
PROMETHEUS_MULTIPROC_DIR, the sum of several listener processes served by one.

Real listener processes, real associations from pynetdicom over loopback."""

from __future__ import annotations

import re
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification  # type: ignore[attr-defined]

from archive.sample_data import PatientInfo, write_study
from tests.conftest import wait_until
from tests.dicom_client import send_files


def _metrics_url(log: str) -> str:
    found = re.search(r"DICOM listener metrics on (http://\S+/metrics)", log)
    assert found, log
    return found.group(1)


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
            found.setdefault(sample.name, {})[labels] = found.get(sample.name, {}).get(labels, 0) + sample.value
    return found


def _value(url: str, name: str, **labels: str) -> float:
    return _scrape(url).get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def _associate(port: int, calling_ae: str, *, find: bool = False) -> Any:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    if find:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return ae.associate("127.0.0.1", port, ae_title="TSCAT_PACS")


def _study(tmp_path: Path, name: str, n: int = 3) -> list[Path]:
    patient = PatientInfo(patient_id=f"MRN-{name}", name="Rossi^Mario", birth_date="19700101", sex="M")
    return write_study(tmp_path / name, patient=patient, instances_per_series=n)


@pytest.mark.django_db(transaction=True)
def test_associations_stores_and_query_latency_are_counted(
    region: Any, start_listener_process: Any, tmp_path: Path
) -> None:
    listener = start_listener_process(env={"PACS_DICOM_METRICS_PORT": "0"})
    url = _metrics_url(listener.log())
    assert _value(url, "pacs_dicom_associations_open", facility="TS-CAT") == 0

    # One association held open while the metrics are read.
    held = _associate(listener.port, "VIEWER", find=True)
    assert held.is_established
    wait_until(lambda: _value(url, "pacs_dicom_associations_open", facility="TS-CAT") == 1, what="one open")

    # Two modalities storing at the same time, one sending a file twice.
    studies = {"STORESCU": _study(tmp_path, "a"), "MODALITY": _study(tmp_path, "b")}
    studies["MODALITY"].append(studies["MODALITY"][0])

    def send(ae: str) -> None:
        report = send_files(listener.port, studies[ae], calling_ae=ae)
        assert report.established

    threads = [threading.Thread(target=send, args=(ae,)) for ae in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # And one association refused by the policy.
    assert _associate(listener.port, "NOBODY").is_rejected

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    answers = list(held.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
    assert answers[-1][0].Status == 0 and len(answers) == 3  # two studies, then success
    held.release()

    try:
        wait_until(
            lambda: _value(url, "pacs_dicom_associations_total", facility="TS-CAT", result="released") == 3,
            what="three associations released",
            timeout=10,
        )
    except TimeoutError:
        raise AssertionError(_scrape(url)) from None
    found = _scrape(url)
    assert found["pacs_dicom_associations_open"][(("facility", "TS-CAT"),)] == 0
    assert found["pacs_dicom_associations_total"][(("facility", "TS-CAT"), ("result", "rejected"))] == 1
    assert found["pacs_dicom_stores_total"][(("facility", "TS-CAT"), ("outcome", "stored"))] == 6
    assert found["pacs_dicom_stores_total"][(("facility", "TS-CAT"), ("outcome", "duplicate"))] == 1
    assert found["pacs_dicom_query_seconds_count"][(("level", "STUDY"), ("service", "C-FIND"))] == 1
    assert 0 < found["pacs_dicom_query_seconds_sum"][(("level", "STUDY"), ("service", "C-FIND"))] < 30
    # No AE title, address or patient datum in the labels.
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "STORESCU" not in text and "NOBODY" not in text and "MRN-" not in text and "127.0.0.1" not in text


@pytest.mark.django_db(transaction=True)
def test_several_listener_processes_add_up_in_one_endpoint(
    region: Any, start_listener_process: Any, tmp_path: Path
) -> None:
    """What a pre-forked listener does: N processes share PROMETHEUS_MULTIPROC_DIR; the one
    that serves the endpoint (the parent) owns the folder and sums every process's values."""
    directory = tmp_path / "metrics"
    (directory).mkdir()
    (directory / "counter_99999.db").write_bytes(b"stale")  # a previous run's: removed at start
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    serving = start_listener_process(env={**shared, "PACS_DICOM_METRICS_PORT": "0"})
    other = start_listener_process(env=shared)
    url = _metrics_url(serving.log())
    assert "metrics on" not in other.log()
    assert not (directory / "counter_99999.db").exists()

    held = _associate(other.port, "VIEWER")
    assert held.is_established
    wait_until(lambda: _value(url, "pacs_dicom_associations_open", facility="TS-CAT") == 1, what="open on the other")
    for port, name in ((serving.port, "a"), (other.port, "b")):
        assert send_files(port, _study(tmp_path, name, n=2), calling_ae="STORESCU").established
    held.release()
    wait_until(
        lambda: _value(url, "pacs_dicom_associations_total", facility="TS-CAT", result="released") == 3,
        what="three associations released, on two processes",
    )
    assert _value(url, "pacs_dicom_stores_total", facility="TS-CAT", outcome="stored") == 4
    assert _value(url, "pacs_dicom_associations_open", facility="TS-CAT") == 0
    # Each process wrote its own files.
    assert len({p.name.rsplit("_", 1)[1] for p in directory.glob("counter_*.db")}) == 2
