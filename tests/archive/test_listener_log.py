"""The listener's log line per association (issue 17): who called (address, AE title
and the node's description), which AE title, how many instances were stored and how
many failed, the other services used and how long it lasted; a rejected association
says why. The technologist reads it to see images arrive."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification  # type: ignore[attr-defined]  # made at run time

from archive.models import RemoteNode
from archive.sample_data import PatientInfo
from tests.conftest import wait_until
from tests.dicom_client import _contexts_for, echo, send_files

LOGGER = "archive.dicomnet.listener"


def _lines(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith(start)]


def _summary(caplog: pytest.LogCaptureFixture) -> str:
    lines = wait_until(lambda: _lines(caplog, "association from"), what="the association's log line")
    assert len(lines) == 1, lines
    return str(lines[0])


@pytest.mark.plain_too
def test_one_line_per_association_with_what_it_stored_and_asked(
    listener: int, ct_study: list[Path], tmp_path: Path, patient: PatientInfo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    RemoteNode.objects.filter(facility__code="TS-CAT", ae_title="STORESCU").update(
        can_query=True, description="Tomografo di prova"
    )
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct_study[0].read_bytes()[:-3000])

    ae = AE(ae_title="STORESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    for sop_class, ts in _contexts_for(ct_study):
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", listener, ae_title="TSCAT_PACS")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        statuses = [int(assoc.send_c_store(path).Status) for path in [*ct_study, ct_study[0], truncated]]
        # Six new, one sent again (already archived: a success), one truncated (refused).
        assert statuses == [0] * 7 + [0xC000]
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        answers = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
        assert answers[-1][0].Status == 0
        assert not _lines(caplog, "association from")  # written when it ends, not before
    finally:
        assoc.release()

    line = _summary(caplog)
    assert re.fullmatch(
        r"association from 127\.0\.0\.1:\d+ STORESCU \(Tomografo di prova\) to TSCAT_PACS \(TS-CAT\) released "
        r"after \d+\.\d s: 7 instances stored \(1 already archived\), 1 failed; echo 1, find 1",
        line,
    ), line
    record = next(r for r in caplog.records if r.getMessage() == line)
    assert record.levelno == logging.INFO


def test_an_echo_only_association_says_so(listener: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert echo(listener, calling_ae="STORESCU", called_ae="GORIZIA_PACS") == 0
    line = _summary(caplog)
    assert " STORESCU to GORIZIA_PACS (GO-SG) released after " in line
    assert line.endswith(": 0 instances stored, 0 failed; echo 1"), line


def test_a_rejected_association_logs_why(listener: int, ct_study: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    report = send_files(listener, ct_study, calling_ae="INTRUDER")
    assert report.rejected
    (line,) = wait_until(lambda: _lines(caplog, "rejecting association"), what="the rejection's log line")
    assert re.fullmatch(
        r"rejecting association from 127\.0\.0\.1:\d+, calling AE 'INTRUDER' to 'TSCAT_PACS': "
        r"calling AE title 'INTRUDER' is not a registered DICOM node of TS-CAT",
        line,
    ), line
    # No association was served: no summary line.
    assert not _lines(caplog, "association from")

    send_files(listener, ct_study[:1], called_ae="NOBODY_HERE")
    lines = wait_until(lambda: _lines(caplog, "rejecting association")[1:], what="the second rejection")
    assert lines[0].endswith("called AE title 'NOBODY_HERE' is not served here"), lines
