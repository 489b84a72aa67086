"""The Modality Performed Procedure Step SCP (PS3.4 F) over real associations to the
in-process listener: N-CREATE and N-SET with their attribute rules, who may report,
the statuses of a refusal (which changes nothing), and the audit."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from pydicom.dataset import Dataset

from archive.models import Patient, PerformedProcedureStep
from kernel.models import AuditEvent
from tests.conftest import Region
from tests.mpps_helpers import (
    completed_attributes,
    create_attributes,
    discontinued_attributes,
    mpps_association,
    n_create,
    n_set,
)

MARIO_CF = "RSSMRA56C12L424P"

# The refused values are made on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


@pytest.fixture
def mario(region: Region) -> Patient:
    return Patient.objects.create(codice_fiscale=MARIO_CF, family_name="ROSSI", given_name="MARIO")


def audits(action: str = "dicom.mpps") -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_create_then_complete_keeps_series_dose_and_times(listener: int, mario: Patient) -> None:
    with mpps_association(listener) as assoc:
        status, uid = n_create(assoc, create_attributes(accession="TSC26000001"))
        assert status.Status == 0x0000
        step = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
        assert step.status == "IN PROGRESS" and step.patient == mario
        assert step.accession_number == "TSC26000001" and step.scheduled_step_id == "TSC26000001"
        assert step.calling_ae == "CT01" and step.facility.code == "TS-CAT"
        assert timezone.localtime(step.started_at).replace(tzinfo=None) == dt.datetime(2026, 12, 5, 8, 15)
        assert step.ended_at is None

        assert n_set(assoc, completed_attributes(series=2), uid).Status == 0x0000
    step.refresh_from_db()
    assert step.status == "COMPLETED"
    assert timezone.localtime(step.ended_at).replace(tzinfo=None) == dt.datetime(2026, 12, 5, 8, 30)
    assert len(step.performed_series) == 2
    assert step.performed_series[0]["images"] == 2 and step.performed_series[0]["protocol_name"] == "TORACE STANDARD"
    assert step.dose["TotalNumberOfExposures"] == 2
    assert step.dose["CommentsOnRadiationDose"].startswith("CTDIvol 7.2")
    assert step.dose["ExposureDoseSequence"][0]["KVP"] == "120" or step.dose["ExposureDoseSequence"][0]["KVP"] == 120
    # The whole data set is kept, creation and set merged.
    kept = Dataset.from_json(step.attributes)
    assert kept.PerformedProcedureStepID == "PPS0001" and kept.PerformedProcedureStepStatus == "COMPLETED"
    events = audits()
    assert [(e.detail["service"], e.outcome, e.patient_id) for e in events] == [
        ("N-CREATE", "success", mario.pk),
        ("N-SET", "success", mario.pk),
    ]
    assert events[1].detail["previous_status"] == "IN PROGRESS" and events[1].ae_title == "CT01"


def test_discontinued_keeps_its_reason(listener: int, mario: Patient) -> None:
    with mpps_association(listener) as assoc:
        _status, uid = n_create(assoc, create_attributes())
        assert n_set(assoc, discontinued_attributes(), uid).Status == 0x0000
    step = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert step.status == "DISCONTINUED" and step.performed_series == []
    assert step.discontinuation_reason == "voce della worklist scelta per errore (110514)"  # CID 9300, in Italian
    assert audits()[-1].detail["discontinuation_reason"] == step.discontinuation_reason


def test_an_in_progress_set_updates_and_a_later_one_completes(listener: int, mario: Patient) -> None:
    with mpps_association(listener) as assoc:
        _status, uid = n_create(assoc, create_attributes())
        update = Dataset()
        update.PerformedProcedureStepDescription = "TC TORACE CON MDC"
        update.CommentsOnThePerformedProcedureStep = "paziente collaborante"
        assert n_set(assoc, update, uid).Status == 0x0000
        step = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
        assert step.status == "IN PROGRESS" and step.description == "TC TORACE CON MDC"
        assert n_set(assoc, completed_attributes(), uid).Status == 0x0000
    step.refresh_from_db()
    assert step.status == "COMPLETED" and step.comments == "paziente collaborante"


def _nothing_created() -> None:
    assert PerformedProcedureStep.objects.count() == 0


@pytest.mark.parametrize(
    ("change", "status", "keyword"),
    [
        (lambda ds: delattr(ds, "PerformedProcedureStepID"), 0x0120, "PerformedProcedureStepID"),  # Type 1 missing
        (lambda ds: delattr(ds, "PatientBirthDate"), 0x0120, "PatientBirthDate"),  # Type 2 missing
        (lambda ds: setattr(ds, "Modality", ""), 0x0121, "Modality"),  # Type 1 empty
        (lambda ds: setattr(ds, "PerformedProcedureStepStatus", "COMPLETED"), 0x0106, "PerformedProcedureStepStatus"),
        (
            lambda ds: setattr(ds, "PerformedProcedureStepStartDate", "20261345"),
            0x0106,
            "PerformedProcedureStepStartDate",
        ),
        (lambda ds: delattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID"), 0x0120, "StudyInstanceUID"),
        (
            lambda ds: setattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID", "1.2.x"),
            0x0106,
            "StudyInstanceUID",
        ),
    ],
)
def test_create_breaking_the_attribute_rules_is_refused(listener: int, mario: Patient, change, status, keyword) -> None:  # type: ignore[no-untyped-def]
    ds = create_attributes()
    change(ds)
    with mpps_association(listener) as assoc:
        answer, _uid = n_create(assoc, ds)
    assert answer.Status == status
    assert keyword in str(answer.get("ErrorComment", ""))
    _nothing_created()
    (event,) = audits()
    assert event.outcome == "failure" and event.detail["service"] == "N-CREATE"
    assert event.patient_id == mario.pk  # the patient the refused step named


def test_a_repeated_create_is_a_duplicate(listener: int, mario: Patient) -> None:
    with mpps_association(listener) as assoc:
        _status, uid = n_create(assoc, create_attributes(accession="FIRST"))
        again, _ = n_create(assoc, create_attributes(accession="SECOND"), uid)
    assert again.Status == 0x0111
    step = PerformedProcedureStep.objects.get()
    assert step.accession_number == "FIRST"
    assert audits()[-1].outcome == "failure" and audits()[-1].patient_id == mario.pk


def test_set_after_completed_is_refused_and_changes_nothing(listener: int, mario: Patient) -> None:
    with mpps_association(listener) as assoc:
        _status, uid = n_create(assoc, create_attributes())
        assert n_set(assoc, completed_attributes(), uid).Status == 0x0000
        before = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
        answer = n_set(assoc, discontinued_attributes(), uid)
    assert answer.Status == 0x0110 and answer.ErrorID == 0xA710
    after = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert (
        after.status == "COMPLETED" and after.attributes == before.attributes and after.updated_at == before.updated_at
    )
    assert audits()[-1].outcome == "failure" and audits()[-1].patient_id == mario.pk


@pytest.mark.parametrize(
    ("modifications", "status"),
    [
        # Not allowed in an N-SET (Table F.7.2-1): who and when the step began.
        ({"PatientID": "BNCLRA72L42L483A"}, 0x0106),
        ({"PerformedProcedureStepStartTime": "090000"}, 0x0106),
        # Final state without an end time (F.7.2.2.2).
        ({"PerformedProcedureStepStatus": "COMPLETED", "PerformedProcedureStepEndTime": ""}, 0x0121),
        # Completed with no series performed.
        ({"PerformedProcedureStepStatus": "COMPLETED", "PerformedSeriesSequence": []}, 0x0121),
        ({"PerformedProcedureStepStatus": "ABORTED"}, 0x0106),
    ],
)
def test_a_set_breaking_the_rules_is_refused_and_changes_nothing(
    listener: int, mario: Patient, modifications, status
) -> None:  # type: ignore[no-untyped-def]
    with mpps_association(listener) as assoc:
        _status, uid = n_create(assoc, create_attributes())
        before = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
        ds = completed_attributes()
        for keyword in list(ds.dir()):
            if keyword not in modifications:
                delattr(ds, keyword)
        for keyword, value in modifications.items():
            setattr(ds, keyword, value)
        if "PerformedProcedureStepStatus" in modifications and "PerformedProcedureStepEndTime" in modifications:
            ds.PerformedProcedureStepEndDate = "20261205"
            ds.PerformedSeriesSequence = completed_attributes().PerformedSeriesSequence
        answer = n_set(assoc, ds, uid)
    assert answer.Status == status, answer
    after = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert after.status == "IN PROGRESS" and after.attributes == before.attributes


def test_a_set_of_an_unknown_step_is_no_such_instance(listener: int, mario: Patient) -> None:
    with mpps_association(listener) as assoc:
        assert n_set(assoc, completed_attributes(), "1.2.3.4.5").Status == 0x0112


def test_a_node_that_may_not_read_the_worklist_may_not_report(listener: int, mario: Patient) -> None:
    # STORESCU is a registered node of TS-CAT that may store, not take worklist items.
    with mpps_association(listener, calling_ae="STORESCU") as assoc:
        answer, uid = n_create(assoc, create_attributes())
        assert answer.Status == 0x0124
        assert n_set(assoc, completed_attributes(), uid).Status == 0x0124
    _nothing_created()
    assert [(e.outcome, e.detail["service"]) for e in audits()] == [("denied", "N-CREATE"), ("denied", "N-SET")]
    assert audits()[0].patient_id == mario.pk


def test_a_step_of_another_facility_is_not_found(listener: int, mario: Patient, region: Region) -> None:
    from archive.models import RemoteNode

    RemoteNode.objects.create(
        facility=region.other_facility, ae_title="CTGO", host="127.0.0.1", port=104, can_worklist=True
    )
    with mpps_association(listener) as assoc:
        _status, uid = n_create(assoc, create_attributes())
    with mpps_association(listener, calling_ae="CTGO", called_ae="GORIZIA_PACS") as assoc:
        assert n_set(assoc, completed_attributes(), uid).Status == 0x0112
    assert PerformedProcedureStep.objects.get(sop_instance_uid=uid).status == "IN PROGRESS"
