"""A citizen with an exam on line, and the portal's flow for its DICOM package: shared by the benchmarks.

* :func:`citizen_ensure` and :func:`booking_ensure` make (or find) a citizen
  with a password login and a booking of an archived study that is reported,
  its report signed and published on line and live now, so that the real
  portal flow serves it (``portal.exams.exam_status`` "available_online").
  The rows are written directly, as ``bench/portal/seed.py`` writes them, not
  through the signing service: no PDF is rendered.
* :func:`citizen_session`, :func:`citizen_login`, :func:`package_ask` and
  :func:`package_state` are the citizen's browser and requests through a web
  process (``requests``, no Django): the login form,
  ``POST /fse/esami/<pk>/pacchetti/dicom/``, and ``/fse/pacchetti/<id>/?format=json``.

Used by ``bench/portal/zip_memory.py`` (the citizen of its 1 GB study) and
``bench/region`` (the region in a box's citizens, downloading during the load).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

from bench.query.generate import _codice_fiscale

# (family name, given name, sex, birth date, Belfiore code of the birthplace)
Person = tuple[str, str, str, dt.date, str]

_CSRF = re.compile(r'name="csrfmiddlewaretoken"\s+value="([^"]+)"')


# --- the rows (Django set up) ----------------------------------------------------------------


def citizen_ensure(person: Person, *, password: str) -> tuple[Any, str]:
    """The citizen ``person`` (patient, portal account with ``password``); (patient, codice fiscale)."""
    from archive.models import Patient
    from portal.accounts import citizen_account_create
    from portal.models import CitizenAccount

    family, given, sex, birth, place = person
    cf = _codice_fiscale(family, given, sex, birth, place)
    patient, _ = Patient.objects.get_or_create(
        codice_fiscale=cf, defaults={"family_name": family, "given_name": given, "sex": sex, "birth_date": birth}
    )
    if not CitizenAccount.objects.filter(codice_fiscale=cf).exists():
        citizen_account_create(codice_fiscale=cf, password=password)
    return patient, cf


def booking_ensure(
    study: Any, patient: Any, *, accession: str, scheduled_at: dt.datetime | None = None, by: str = "bench/portal"
) -> Any:
    """A reported booking ``accession`` of ``study`` for ``patient``: online choice, a signed report
    published and live now (a new version when the last publication is withdrawn or expires
    within the hour).

    ``scheduled_at``: the booking's slot at the study facility's first CT station (default a
    year ago: a slot no seeded booking takes); citizens of one facility need one each.
    The facility needs a CT station and the catalogue a CT procedure and a consent text
    (``booking.demo.demo_load``).
    """
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from archive.models import Report
    from booking.models import Booking, ConsentText, DistributionChoice, Procedure, Station
    from portal.models import Publication

    now = timezone.now()
    booking = Booking.objects.filter(accession_number=accession).first()
    with transaction.atomic():
        if booking is None:
            station = Station.objects.filter(facility=study.facility, modality="CT").first()
            booking = Booking.objects.create(
                accession_number=accession,
                study_instance_uid=study.study_instance_uid,
                patient=patient,
                facility=study.facility,
                procedure=Procedure.objects.filter(modality="CT").first(),
                station=station,
                scheduled_at=scheduled_at or now.replace(year=now.year - 1, microsecond=0),
                channel=Booking.Channel.REGIONAL_CUP,
                status=Booking.Status.REPORTED,
                study=study,
            )
            DistributionChoice.objects.create(
                booking=booking,
                version=1,
                delivery=DistributionChoice.Delivery.ONLINE,
                consent_text=ConsentText.objects.order_by("-published_at").first(),
                channel=booking.channel,
                recorded_by_name=by,
            )
        live = Publication.objects.filter(
            booking=booking, withdrawn_at__isnull=True, available_until__gt=now + dt.timedelta(hours=1)
        ).exists()
        if not live:
            # A new signed version (an addendum after the first) with its publication, valid 45 days from now.
            author, _ = get_user_model().objects.get_or_create(username="bench-radiologo")
            last = Report.objects.filter(study=study).order_by("-version").first()
            version = (last.version + 1) if last else 1
            sha = hashlib.sha256(f"{study.study_instance_uid}/{version}".encode()).hexdigest()
            report = Report.objects.create(
                study=study,
                version=version,
                previous=last,
                kind=Report.Kind.ADDENDUM if last else Report.Kind.ORIGINAL,
                status=Report.Status.SIGNED,
                author=author,
                findings=by,
                signed_at=now,
                signer_name="bench",
                pdf_path=f"reports/bench/{sha}.pdf",
                pdf_sha256=sha,
                signature_path=f"reports/bench/{sha}.pdf.p7m",
            )
            Publication.objects.create(
                booking=booking, report=report, published_at=now, available_until=now + dt.timedelta(days=45)
            )
    return booking


# --- the citizen's requests (no Django) -----------------------------------------------------


def citizen_session() -> Any:
    """A ``requests.Session`` that, as a browser does, sends a GET again when the connection it reused
    was closed under it: gunicorn closes a connection idle for its ``keepalive`` (2 s), and a request
    sent at that moment meets a reset. Other methods are never sent twice."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    retry = Retry(total=2, connect=2, read=2, status=0, other=0, allowed_methods=frozenset({"GET"}))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def citizen_login(session: Any, base: str, *, cf: str, password: str) -> None:
    """Log ``session`` (a ``requests.Session``) in at ``base``'s portal with the local login form."""
    form = session.get(f"{base}/fse/accesso/", timeout=30)
    token = _CSRF.search(form.text)
    if not token:
        raise RuntimeError(f"no CSRF token on the login page (HTTP {form.status_code})")
    r = session.post(
        f"{base}/fse/accesso/",
        data={"codice_fiscale": cf, "password": password, "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{base}/fse/accesso/"},
        allow_redirects=False,
        timeout=60,
    )
    if r.status_code != 302:
        raise RuntimeError(f"login: HTTP {r.status_code}")


def package_ask(session: Any, base: str, *, booking_pk: int, kind: str = "dicom", timeout: float = 600) -> int:
    """The exam page, then the package request from its form; the package's primary key.

    ``timeout``: a study under ``PACS_PORTAL_INLINE_BYTES`` is zipped while the request waits."""
    page = session.get(f"{base}/fse/esami/{booking_pk}/", timeout=30)
    token = _CSRF.search(page.text)
    if page.status_code != 200 or not token:
        raise RuntimeError(f"exam page: HTTP {page.status_code}")
    r = session.post(
        f"{base}/fse/esami/{booking_pk}/pacchetti/{kind}/",
        data={"csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{base}/fse/esami/{booking_pk}/"},
        allow_redirects=False,
        timeout=timeout,
    )
    found = re.search(r"/fse/pacchetti/(\d+)/", r.headers.get("Location", ""))
    if r.status_code != 302 or not found:
        raise RuntimeError(f"package request: HTTP {r.status_code} {r.headers.get('Location', '')}")
    return int(found.group(1))


def package_state(session: Any, base: str, package_pk: int) -> dict[str, Any]:
    """The package page's JSON: ``status``, ``percent``, ``download_url`` (once ready), ``error``."""
    answer = session.get(f"{base}/fse/pacchetti/{package_pk}/?format=json", timeout=30)
    answer.raise_for_status()
    return dict(answer.json())
