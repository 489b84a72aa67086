"""The one alert: a damage found again updates its open alert, an acknowledged one
stays closed, and acknowledging keeps who saw it first."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from archive.models import StorageAlert
from archive.storage.admin import StorageAlertAdmin
from kernel.admin import AlertAdminMixin
from kernel.alerts import Alert
from preservation.admin import PreservationAlertAdmin
from preservation.models import PreservationAlert

pytestmark = pytest.mark.django_db


def test_both_apps_alerts_are_one_model() -> None:
    assert issubclass(StorageAlert, Alert) and issubclass(PreservationAlert, Alert)
    assert issubclass(StorageAlertAdmin, AlertAdminMixin) and issubclass(PreservationAlertAdmin, AlertAdminMixin)


def test_a_damage_found_again_updates_its_open_alert_and_after_acknowledgement_opens_a_new_one() -> None:
    damage = {"kind": PreservationAlert.Kind.MISSING, "path": "aip/PdA-1/x.dcm", "package": None, "volume": None}
    assert PreservationAlert.raise_or_update(damage=damage, detail="first")
    assert not PreservationAlert.raise_or_update(damage=damage, detail="again")
    other = {**damage, "kind": PreservationAlert.Kind.DAMAGED}
    assert PreservationAlert.raise_or_update(damage=other, detail="another kind, another alert")
    alert = PreservationAlert.objects.get(kind=PreservationAlert.Kind.MISSING)
    assert (alert.count, alert.detail) == (2, "again") and alert.last_seen_at >= alert.created_at

    officer, other_officer = (get_user_model().objects.create_user(name) for name in ("officer", "other"))
    assert PreservationAlert.objects.filter(pk=alert.pk).acknowledge(user=officer) == 1
    assert PreservationAlert.objects.filter(pk=alert.pk).acknowledge(user=other_officer) == 0  # already seen
    alert.refresh_from_db()
    assert alert.acknowledged_by == officer and alert.acknowledged_at is not None
    assert PreservationAlert.raise_or_update(damage=damage, detail="found after it was seen")
    assert PreservationAlert.objects.unacknowledged().count() == 2


def test_the_storage_alert_is_one_per_copy_whatever_its_kind_now() -> None:
    damage = {"tier": "longterm:region", "path": "ab/cd.dcm"}
    assert StorageAlert.raise_or_update(damage=damage, kind=StorageAlert.Kind.DAMAGED, detail="x", repaired=False)
    assert not StorageAlert.raise_or_update(damage=damage, kind=StorageAlert.Kind.UNREPAIRABLE, detail="y")
    alert = StorageAlert.objects.get()
    assert (alert.kind, alert.count, alert.detail) == (StorageAlert.Kind.UNREPAIRABLE, 2, "y")
