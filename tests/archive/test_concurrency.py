"""Many associations storing the same new study at once: peers have shipped
duplicate-study bugs here."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from archive.models import Copy, Instance, Patient, PatientIdentifier, Series, Study
from archive.sample_data import PatientInfo, write_study
from tests.dicom_client import send_files

pytestmark = pytest.mark.slow

ASSOCIATIONS = 20
ROUNDS = 5


def test_twenty_associations_sending_the_same_new_study(start_listener_process, region, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Twenty senders from one address: more than one address's slots (PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS).
    listener = start_listener_process(env={"PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS": str(ASSOCIATIONS)})
    patient = PatientInfo(patient_id="MRN-CONC")
    for round_ in range(ROUNDS):
        files = write_study(tmp_path / f"round{round_}", patient=patient, series=2, instances_per_series=3)
        barrier = threading.Barrier(ASSOCIATIONS)
        reports: list = [None] * ASSOCIATIONS

        def send(i: int, barrier: threading.Barrier, reports: list, files: list[Path]) -> None:
            barrier.wait()
            reports[i] = send_files(listener.port, files, calling_ae="MODALITY")

        threads = [threading.Thread(target=send, args=(i, barrier, reports, files)) for i in range(ASSOCIATIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for r in reports:
            assert r is not None and r.established, listener.log()[-2000:]
            assert set(r.statuses.values()) == {0x0000}, r.comments

    assert Patient.objects.count() == 1
    assert PatientIdentifier.objects.count() == 1
    assert Study.objects.count() == ROUNDS
    assert Series.objects.count() == ROUNDS * 2
    assert Instance.objects.count() == Copy.objects.count() == ROUNDS * 6
    for study in Study.objects.all():
        assert (study.number_of_series, study.number_of_instances, study.modalities_in_study) == (2, 6, "CT")
        assert sorted(study.series.values_list("number_of_instances", flat=True)) == [3, 3]
