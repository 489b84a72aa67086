"""The one heartbeat lease (preservation packages and volumes, the citizen's zips):
a claim, a renewal, a stale holder taken over, and two claimers racing on a real
database, of whom exactly one wins."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import close_old_connections, connections
from django.db.models import Q
from django.utils import timezone

from kernel import leases
from preservation.models import Volume

STALE = dt.timedelta(minutes=10)


def _volume(heartbeat_at: dt.datetime | None, name: str = "VOL-1") -> Volume:
    return Volume.objects.create(identifier=name, tier="preservation:region", heartbeat_at=heartbeat_at)


def _building(volume: Volume):  # type: ignore[no-untyped-def]
    return Volume.objects.filter(pk=volume.pk, status=Volume.Status.BUILDING)


@pytest.mark.django_db
def test_a_live_holder_keeps_its_row_and_a_stale_or_absent_one_loses_it() -> None:
    now = timezone.now()
    live = _volume(now - STALE + dt.timedelta(seconds=5), "VOL-live")
    stale = _volume(now - STALE, "VOL-stale")
    never = _volume(None, "VOL-never")
    assert set(leases.leases_stale(Volume.objects.all(), stale_after=STALE, now=now)) == {stale, never}
    assert not leases.lease_claim(_building(live), stale_after=STALE, now=now)
    assert leases.lease_claim(_building(stale), stale_after=STALE, now=now)
    assert leases.lease_claim(_building(never), stale_after=STALE, now=now, signer_name="claimed with it")
    never.refresh_from_db()
    assert never.heartbeat_at == now and never.signer_name == "claimed with it"
    # Just claimed: the next claimer finds a live holder.
    assert not leases.lease_claim(_building(stale), stale_after=STALE)


@pytest.mark.django_db
def test_a_renewal_keeps_the_row_and_a_free_row_needs_no_staleness() -> None:
    volume = _volume(timezone.now() - STALE)
    assert leases.lease_renew(_building(volume), signer_name="progress") == 1
    volume.refresh_from_db()
    assert volume.heartbeat_at > timezone.now() - dt.timedelta(seconds=5) and volume.signer_name == "progress"
    assert not leases.lease_claim(_building(volume), stale_after=STALE)
    assert leases.lease_claim(_building(volume), stale_after=STALE, free=Q(identifier=volume.identifier))
    # Only in the states the caller names: a closed volume is nobody's work.
    Volume.objects.filter(pk=volume.pk).update(status=Volume.Status.CLOSED, heartbeat_at=None)
    assert not leases.lease_claim(_building(volume), stale_after=STALE)


@pytest.mark.django_db(transaction=True)
def test_two_claimers_of_a_stale_row_racing_one_wins() -> None:
    """Both read the row as stale before either writes; the database lets one in. Ten rounds."""
    volume = _volume(None)
    for _round in range(10):
        Volume.objects.filter(pk=volume.pk).update(heartbeat_at=timezone.now() - STALE - dt.timedelta(seconds=1))
        barrier = threading.Barrier(2)
        won: list[bool | BaseException] = []

        def claimer(barrier: threading.Barrier, won: list[bool | BaseException]) -> None:
            try:
                assert leases.leases_stale(_building(volume), stale_after=STALE).exists()
                barrier.wait(timeout=10)
                won.append(leases.lease_claim(_building(volume), stale_after=STALE))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                won.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=claimer, args=(barrier, won)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        close_old_connections()
        assert sorted(won, key=str) == [False, True], won
