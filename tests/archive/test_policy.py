"""The access policy itself (archive.access): each principal's studies, as a query
condition and for one study, on rows made directly (no files needed)."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from archive import access
from archive.models import Facility, HealthAuthority, Instance, Patient, RemoteNode, Report, Series, StaffProfile, Study
from portal.models import CitizenAccount, Concealment, Delegation, EmergencyAccess
from tests.conftest import Region
from tests.plan_helpers import plan_buffers, plan_nodes, plan_of

_uids = itertools.count(1)
# Codici fiscali with a valid check character (python-codicefiscale's encoding).
ROSSI_CF = "RSSMRA56C12L424P"
BIANCHI_CF = "BNCLRA72L42L483A"


def _uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.{next(_uids)}"


def _study(patient: Patient, facility: Facility) -> Study:
    study = Study.objects.create(study_instance_uid=_uid(), patient=patient, facility=facility, patient_name="X^Y")
    series = Series.objects.create(series_instance_uid=_uid(), study=study, modality="CT")
    Instance.objects.create(
        sop_instance_uid=_uid(),
        series=series,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=1,
        sha256="0" * 64,
        facility=facility,
        received_at=timezone.now(),
    )
    return study


def _user(username: str, *perms: str, authority: HealthAuthority | None = None, profile: bool = True) -> object:
    user = get_user_model().objects.create_user(username=username, password="x-password-123")
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    if profile:
        StaffProfile.objects.create(user=user, authority=authority)
    return get_user_model().objects.get(pk=user.pk)


@dataclass
class World:
    region: Region
    other_authority: HealthAuthority
    udine: Facility
    rossi: Patient
    bianchi: Patient
    own: Study  # Rossi, TS-CAT (ASUGI)
    hidden: Study  # Rossi, TS-CAT, concealed by the patient
    gorizia: Study  # Rossi, GO-SG (ASUGI, another facility)
    foreign: Study  # Bianchi, UD (ASUFC)
    radiologist: object  # ASUGI
    regional: object  # staff of no authority
    cup: object  # staff without archive.view_study


@pytest.fixture
def world(region: Region) -> World:
    asufc = HealthAuthority.objects.create(code="ASUFC", name="Friuli Centrale")
    udine = Facility.objects.create(code="UD-SMM", name="Udine", authority=asufc, ae_title="UDINE_PACS", dicom_port=1)
    rossi = Patient.objects.create(codice_fiscale=ROSSI_CF, family_name="ROSSI", given_name="MARIO")
    bianchi = Patient.objects.create(codice_fiscale=BIANCHI_CF, family_name="BIANCHI", given_name="LAURA")
    own = _study(rossi, region.facility)
    hidden = _study(rossi, region.facility)
    Concealment.objects.create(patient=rossi, study=hidden, requested_by=rossi)
    gorizia = _study(rossi, region.other_facility)
    foreign = _study(bianchi, udine)
    radiologist = _user("radiologo", "archive.view_study", authority=region.authority)
    regional = _user("regionale", "archive.view_study")
    cup = _user("cup", "archive.view_patient")
    return World(region, asufc, udine, rossi, bianchi, own, hidden, gorizia, foreign, radiologist, regional, cup)


def _visible(principal: access.Principal) -> set[int]:
    return set(access.studies_visible(principal).values_list("pk", flat=True))


def _agrees(principal: access.Principal, w: World) -> set[int]:
    """The studies visible as a queryset condition, checked against the one-study verdict and the
    conditions written for series and instances (paths through the relations)."""
    every = [w.own, w.hidden, w.gorizia, w.foreign]
    one_by_one = {s.pk for s in every if access.study_visible(principal, s)}
    by_query = _visible(principal)
    by_series = set(
        access.filter_visible(Series.objects.all(), principal, "study__").values_list("study_id", flat=True)
    )
    by_instance = set(
        access.filter_visible(Instance.objects.all(), principal, "series__study__").values_list(
            "series__study_id", flat=True
        )
    )
    assert by_query == one_by_one == by_series == by_instance
    return by_query


def test_staff_of_an_authority_sees_its_studies_but_not_the_hidden_one(world: World) -> None:
    w = world
    principal = access.principal_for_user(w.radiologist)
    assert principal.is_staff and principal.authority_id == w.region.authority.pk
    assert _agrees(principal, w) == {w.own.pk, w.gorizia.pk}
    assert access.study_verdict(principal, w.hidden) is access.Verdict.CONCEALED
    assert access.study_verdict(principal, w.foreign) is access.Verdict.OUT_OF_SCOPE


def test_regional_staff_see_every_authority_but_never_a_hidden_study(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    w = world
    assert _agrees(access.principal_for_user(w.regional), w) == {w.own.pk, w.gorizia.pk, w.foreign.pk}
    settings.PACS_REPORT_CROSS_AUTHORITY = True
    assert _agrees(access.principal_for_user(w.radiologist), w) == {w.own.pk, w.gorizia.pk, w.foreign.pk}


def test_staff_without_the_permission_and_anonymous_see_nothing(world: World) -> None:
    w = world
    assert _agrees(access.principal_for_user(w.cup), w) == set()
    assert access.study_verdict(access.principal_for_user(w.cup), w.own) is access.Verdict.NO_PERMISSION
    assert _agrees(access.principal_for_user(None), w) == set()
    assert access.principal_for_user(None) is access.NOBODY


def test_a_live_emergency_access_opens_that_patients_hidden_studies_for_that_user_only(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    w = world
    other_hidden = _study(w.bianchi, w.region.facility)
    Concealment.objects.create(patient=w.bianchi, study=other_hidden, requested_by=w.bianchi)
    EmergencyAccess.objects.create(user=w.radiologist, patient=w.rossi, reason="Paziente in pronto soccorso")
    principal = access.principal_for_user(w.radiologist)
    assert _agrees(principal, w) == {w.own.pk, w.hidden.pk, w.gorizia.pk}
    assert other_hidden.pk not in _visible(principal)
    assert w.hidden.pk not in _visible(access.principal_for_user(w.regional))
    # It lasts PACS_EMERGENCY_ACCESS_MINUTES.
    EmergencyAccess.objects.update(at=timezone.now() - dt.timedelta(minutes=settings.PACS_EMERGENCY_ACCESS_MINUTES + 1))
    assert w.hidden.pk not in _visible(access.principal_for_user(w.radiologist))


def test_the_author_of_a_report_still_sees_the_study_the_patient_hid_afterwards(world: World) -> None:
    w = world
    Report.objects.create(study=w.hidden, version=1, author=w.radiologist)
    assert w.hidden.pk in _agrees(access.principal_for_user(w.radiologist), w)
    assert w.hidden.pk not in _visible(access.principal_for_user(w.regional))


def test_a_citizen_sees_own_and_delegators_studies_hidden_included(world: World) -> None:
    w = world
    user = get_user_model().objects.create_user(username=ROSSI_CF, password="x-password-123")
    CitizenAccount.objects.create(user=user, codice_fiscale=ROSSI_CF)
    principal = access.principal_for_user(user)
    assert principal.is_citizen
    assert _agrees(principal, w) == {w.own.pk, w.hidden.pk, w.gorizia.pk}
    delegation = Delegation.objects.create(
        delegator=w.bianchi,
        delegate=w.rossi,
        kind=Delegation.Kind.OTHER,
        evidence="delega firmata",
        registered_by=w.cup,
    )
    assert w.foreign.pk in _agrees(access.principal_for_user(user), w)
    Delegation.objects.filter(pk=delegation.pk).update(revoked_at=timezone.now())
    assert w.foreign.pk not in _visible(access.principal_for_user(user))


def test_a_citizen_with_no_exam_in_the_archive_sees_nothing(world: World) -> None:
    user = get_user_model().objects.create_user(username="ZNTGLI90S63G888K", password="x-password-123")
    CitizenAccount.objects.create(user=user, codice_fiscale="ZNTGLI90S63G888K")
    assert _agrees(access.principal_for_user(user), world) == set()


@pytest.mark.parametrize(
    ("scope", "expected"),
    [("facility", {"own"}), ("authority", {"own", "gorizia"}), ("region", {"own", "gorizia", "foreign"})],
)
def test_a_dicom_node_sees_its_scope_never_a_hidden_study(world: World, scope: str, expected: set[str]) -> None:
    w = world
    node = RemoteNode.objects.create(
        facility=w.region.facility, ae_title="RADWS", host="127.0.0.1", port=104, can_query=True, scope=scope
    )
    found = _agrees(access.principal_for_node(node), w)
    assert found == {getattr(w, name).pk for name in expected}
    assert _agrees(access.principal_for_node(None), w) == set()


def test_system_sees_everything(world: World) -> None:
    w = world
    assert _agrees(access.SYSTEM, w) == {w.own.pk, w.hidden.pk, w.gorizia.pk, w.foreign.pk}


def test_patients_visible(world: World) -> None:
    w = world
    radiologist = access.principal_for_user(w.radiologist)
    assert set(access.patients_visible(radiologist)) == {w.rossi}
    assert set(access.patients_visible(access.principal_for_user(w.regional))) == {w.rossi, w.bianchi}
    assert set(access.patients_visible(access.principal_for_user(w.cup))) == set()


# --- the key of caches over what a principal sees (archive.access.visibility_key) ----------------


def test_the_visibility_key_changes_with_every_concealment_set_or_lifted_however_it_is_written(world: World) -> None:
    from collections.abc import Callable

    from portal import oscuramento
    from portal.models import ConcealmentVersion

    w = world
    principal = access.principal_for_user(w.radiologist)

    def key_changes(write: Callable[[], object]) -> bool:
        before = access.visibility_key(principal)
        assert access.visibility_key(principal) == before  # nothing written, the same key
        write()
        return access.visibility_key(principal) != before

    assert key_changes(lambda: oscuramento.conceal(patient=w.rossi, study=w.own))  # on the portal
    assert key_changes(lambda: oscuramento.reveal(patient=w.rossi, study=w.own))
    # A row made directly, then changed in bulk.
    assert key_changes(lambda: Concealment.objects.create(patient=w.rossi, study=w.gorizia, requested_by=w.rossi))
    assert key_changes(lambda: Concealment.objects.filter(study=w.gorizia).update(revealed_at=timezone.now()))
    # Without its row (as a flush of the test database leaves it), the next write makes it again.
    ConcealmentVersion.objects.all().delete()
    assert key_changes(lambda: oscuramento.conceal(patient=w.rossi, study=w.gorizia))
    assert ConcealmentVersion.objects.get().version == 1
    # A bulk update that changes no concealment counts nothing.
    assert not key_changes(lambda: Concealment.objects.filter(study=w.foreign).update(revealed_at=timezone.now()))


def test_the_visibility_key_reads_no_concealment_of_the_region(world: World) -> None:
    """A region's concealments (here 10,000, set and lifted over the years): the key an admin list
    page computes reads one row by its key, not every concealment (the aggregate over them all was
    a sequential scan on each page: 5.9 ms at 12,000)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("the plan is PostgreSQL's")
    w = world
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO portal_concealment (hidden_at, hidden_by_patient, revealed_at, patient_id, study_id,"
            " requested_by_id) SELECT now() - g * interval '1 day', TRUE, now() - g * interval '1 hour', %s, %s, %s"
            " FROM generate_series(1, 10000) g",
            [w.rossi.pk, w.own.pk, w.rossi.pk],
        )
        cursor.execute("ANALYZE portal_concealment")
    principal = access.principal_for_user(w.radiologist)
    with CaptureQueriesContext(connection) as queries:
        access.visibility_key(principal)
    assert queries.captured_queries
    for query in queries.captured_queries:
        plan = plan_of(query["sql"])
        nodes = list(plan_nodes(plan))
        read = [n for n in nodes if n.get("Relation Name") == "portal_concealment"]
        assert not read, f"reads the concealments: {query['sql'][:300]}"
        assert max(n["Actual Rows"] * n.get("Actual Loops", 1) for n in nodes) < 10
        assert plan_buffers(plan) < 10
