"""Radiology reports: the draft a radiologist claims and edits, its signature,
its corrections and addenda, and who may open which study.

A study has at most one draft at a time (a database constraint): creating it
is the claim that tells colleagues someone is reporting the study. The draft
is not private to whoever claimed it: any radiologist who may open the study
and change reports edits it (a resident drafts, the attending corrects and
signs; a colleague takes over), and any who may sign reports signs it; only
its author discards it. A save names the revision it edited and moves the
row only if nobody saved since (optimistic concurrency, one conditional
UPDATE checked for one row), so of two radiologists saving from the same
revision the second is told who saved first and overwrites nothing. Signing
re-authenticates the signer, makes the PDF and its detached CAdES
signature and stores both in the study's facility tier *outside* any
transaction (slow work), then flips the row draft -> signed with one
conditional UPDATE; a signed row never changes again (model and database).
Files written by a signing that then loses the race stay where they are:
their names carry their SHA-256, so nothing ever points at wrong bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import uuid
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import Case, CharField, Exists, F, IntegerField, Max, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.translation import gettext as _

from archive import access, signals
from archive.access import staff_profile
from archive.models import Facility, Instance, Report, Study
from archive.storage import tiers as storage
from kernel import tasknames
from kernel.audit import audit_record
from kernel.errors import Conflict, Invalid
from kernel.models import AuditEvent

if TYPE_CHECKING:
    # Only for hints: signing (and the PDF maker) are imported lazily, when a
    # report is signed or verified, so that reading reports never loads them.
    from django.contrib.auth.models import User
    from pydicom.dataset import Dataset

    from archive.rendering.pipeline import Window
    from archive.reporting.signing import SignatureCheck

logger = logging.getLogger(__name__)

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# The encapsulated report's series: far above the modalities' own numbers.
ENCAPSULATED_SERIES_BASE = 9000

DENIED = AuditEvent.Outcome.DENIED
FAILURE = AuditEvent.Outcome.FAILURE


class ReportError(Invalid):
    """A report action that was refused or failed; ``message`` is for the user (Italian).

    ``code``: ``reauth`` (wrong password or second factor), ``author`` (only
    the draft's author may discard it), ``state`` (not a draft / not signed /
    already amended),
    ``empty`` (nothing to sign), ``signing``, ``storage``, ``damaged``,
    ``missing`` (a file not in the archive), ``invalid``.
    """


class ReportConflict(Conflict, ReportError):
    """Someone else saved, signed, claimed or discarded first: reload and look again.

    ``code``: ``conflict``, ``claimed``, ``signed``, ``superseded``, ``discarded``.
    """


# --- who may open what -------------------------------------------------------


def _person(user: Any) -> str:
    return (user.get_full_name() or user.get_username()).strip()


def _hhmm(moment: dt.datetime | None) -> str:
    return timezone.localtime(moment).strftime("%H:%M") if moment else ""


def studies_accessible(*, user: User) -> QuerySet[Study]:
    """The studies ``user`` may open (:func:`archive.access.studies_visible`)."""
    return access.studies_visible(access.principal_for_user(user))


def study_access_check(*, user: User, study: Study, source: str = "") -> None:
    """Raise :class:`~archive.access.StudyNotVisible` (a 404, and audit ``study.denied`` with
    the reason) when ``user`` may not open ``study`` (:func:`archive.access.study_verdict`)."""
    verdict = access.study_verdict(access.principal_for_user(user), study)
    if verdict is access.Verdict.VISIBLE:
        return
    audit_record(
        action="study.denied",
        outcome=DENIED,
        user=user,
        study=study,
        source=source,
        detail={"reason": verdict.value},
    )
    raise access.StudyNotVisible(verdict)


def _permission_check(*, user: Any, perm: str, action: str, study: Study, source: str, detail: dict) -> None:
    """The user may open ``study`` (else :func:`study_access_check` refuses) and holds ``perm``."""
    study_access_check(user=user, study=study, source=source)
    if not user.has_perm(perm):
        audit_record(
            action=action,
            outcome=DENIED,
            user=user,
            study=study,
            source=source,
            detail={**detail, "reason": "permission", "permission": perm},
        )
        raise PermissionDenied(_("Non hai il permesso per questa operazione sui referti."))


# --- reading ----------------------------------------------------------------


def report_current(*, study: Study) -> Report | None:
    """The study's latest signed version; None if it was never signed."""
    return (
        Report.objects.filter(study=study, status=Report.Status.SIGNED)
        .select_related("author", "previous")
        .order_by("-version")
        .first()
    )


def report_draft(*, study: Study) -> Report | None:
    """The study's draft (at most one), if anyone is reporting it."""
    return Report.objects.filter(study=study, status=Report.Status.DRAFT).select_related("author", "updated_by").first()


def _detail(report: Report) -> dict[str, Any]:
    return {"report": report.pk, "version": report.version, "kind": report.kind}


def _reload(report: Report) -> Report | None:
    return (
        Report.objects.select_related("author", "updated_by", "study", "study__facility").filter(pk=report.pk).first()
    )


def _claimed_conflict(draft: Report) -> ReportConflict:
    return ReportConflict(
        _("%(name)s sta già refertando questo studio (bozza aperta alle %(time)s).")
        % {"name": _person(draft.author), "time": _hhmm(draft.created_at)},
        code="claimed",
    )


# --- the work list and the viewer ------------------------------------------------


def _modality_q(modality: str) -> Q:
    """ModalitiesInStudy holds ``CT\\PR``: match whole values, so that ``CT`` is not found in ``XCT``."""
    sep = "\\"
    return (
        Q(modalities_in_study=modality)
        | Q(modalities_in_study__startswith=modality + sep)
        | Q(modalities_in_study__endswith=sep + modality)
        | Q(modalities_in_study__contains=sep + modality + sep)
    )


def worklist_studies(
    *,
    principal: access.Principal,
    facility: Facility | None = None,
    modality: str = "",
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    priority: str = "",
    claimed: bool | None = None,
) -> QuerySet[Study]:
    """The studies without a signed report that ``principal`` may see, filtered, urgent first then oldest.

    ``claimed``: only those with a draft (True) or without one (False). Each
    study carries ``has_draft``, ``draft_author_first``, ``draft_author_last``,
    ``draft_author_username`` and ``draft_since`` (who is reporting it, since when).
    """
    signed = Report.objects.filter(study=OuterRef("pk"), status=Report.Status.SIGNED)
    drafts = Report.objects.filter(study=OuterRef("pk"), status=Report.Status.DRAFT)
    qs = (
        access.studies_visible(principal)
        .exclude(Exists(signed))
        .select_related("patient", "facility")
        .annotate(
            has_draft=Exists(drafts),
            draft_author_first=Subquery(drafts.values("author__first_name")[:1]),
            draft_author_last=Subquery(drafts.values("author__last_name")[:1]),
            draft_author_username=Subquery(drafts.values("author__username")[:1]),
            draft_since=Subquery(drafts.values("created_at")[:1]),
            urgency=Case(When(priority="U", then=Value(0)), default=Value(1), output_field=IntegerField()),
        )
    )
    if facility:
        qs = qs.filter(facility=facility)
    if modality:
        qs = qs.filter(_modality_q(modality))
    if date_from:
        qs = qs.filter(study_date__gte=date_from)
    if date_to:
        qs = qs.filter(study_date__lte=date_to)
    if priority:
        qs = qs.filter(priority=priority)
    if claimed is not None:
        qs = qs.filter(has_draft=claimed)
    return qs.order_by("urgency", F("study_date").asc(nulls_last=True), "study_time", "pk")


def worklist_choices(*, principal: access.Principal) -> tuple[QuerySet[Facility], list[str]]:
    """The facilities and the modalities of the studies ``principal`` may see (the work list's filters)."""
    visible = access.studies_visible(principal)
    facilities = Facility.objects.filter(pk__in=visible.values("facility")).order_by("name")
    combinations = visible.values_list("modalities_in_study", flat=True).distinct()
    return facilities, sorted({m for value in combinations for m in value.split("\\") if m})


def instance_windows(*, instance: Instance) -> list[tuple[str, Window]]:
    """The VOI windows the instance's header names, each with its explanation ("" when none);
    empty when the header cannot be read (the viewer then offers its default window only)."""
    from pydicom import dcmread

    from archive.rendering import pipeline as rendering
    from archive.storage import retrieve

    try:
        with retrieve.instance_open(instance) as fh:
            ds = dcmread(fh, stop_before_pixels=True)
        explanations = [str(x) for x in (ds.get("WindowCenterWidthExplanation") or [])]
        if isinstance(ds.get("WindowCenterWidthExplanation"), str):
            explanations = [str(ds.WindowCenterWidthExplanation)]
        windows = rendering.window_presets(ds)
    except retrieve.NotAvailable as exc:
        logger.warning("no window presets for instance %s: %s", instance.sop_instance_uid, exc)
        return []
    except Exception:  # a header pydicom cannot read: the viewer still works with the default window
        logger.exception("could not read the window presets of instance %s", instance.sop_instance_uid)
        return []
    return [(explanations[i] if i < len(explanations) else "", window) for i, window in enumerate(windows)]


# --- drafts -----------------------------------------------------------------


def _draft_create(*, study: Study, user: Any, values: dict[str, Any]) -> Report:
    """Create the study's draft (the claim); the database settles two claims at once."""
    try:
        with transaction.atomic():
            last = Report.objects.filter(study=study).aggregate(m=Max("version"))["m"] or 0
            return Report.objects.create(study=study, author=user, updated_by=user, version=last + 1, **values)
    except IntegrityError:
        # Another radiologist's draft (report_one_draft) or version
        # (report_unique_version) was committed between our look and our insert.
        draft = report_draft(study=study)
        if draft is not None:
            if draft.author_id == user.pk:
                return draft
            raise _claimed_conflict(draft) from None
        raise ReportConflict(_("Il referto dello studio è appena cambiato: ricarica la pagina.")) from None


def report_draft_start(*, study: Study, user: User, source: str = "") -> Report:
    """Claim ``study`` for reporting: create its draft, or return the user's own.

    The clinical question is pre-filled from the booking's
    (``study.reason_for_request``). A colleague's existing draft is not
    returned but refused, naming its author (the claim the work list shows);
    the colleague may still open it and edit it with :func:`report_save`.

    Raises
    ------
    PermissionDenied
        The user may not open the study or write reports.
    ReportConflict
        Another radiologist's draft exists (the message names them).
    ReportError
        The study already has a signed report: it is corrected or
        completed with :func:`report_amend`, not reported again.
    """
    _permission_check(
        user=user, perm="archive.add_report", action="report.start", study=study, source=source, detail={}
    )
    draft = report_draft(study=study)
    if draft is not None:
        if draft.author_id == user.pk:
            return draft
        raise _claimed_conflict(draft)
    if report_current(study=study) is not None:
        raise ReportError(
            _("Lo studio ha già un referto firmato: si può redigere una rettifica o un'integrazione."),
            code="state",
        )
    report = _draft_create(
        study=study,
        user=user,
        values={"kind": Report.Kind.ORIGINAL, "clinical_question": study.reason_for_request or ""},
    )
    audit_record(action="report.start", user=user, study=study, source=source, detail=_detail(report))
    return report


def _open_draft(*, report: Report) -> Report:
    """The current row of ``report``, which must still be a draft."""
    row = _reload(report)
    if row is None:
        raise ReportConflict(_("La bozza non esiste più: è stata scartata."), code="discarded")
    if row.status != Report.Status.DRAFT:
        raise ReportConflict(
            _("Il referto è già stato firmato alle %(time)s.") % {"time": _hhmm(row.signed_at)}, code="signed"
        )
    return row


def _own_draft(*, report: Report, user: Any, action: str, source: str) -> Report:
    """The current row of ``report``, which must be a draft claimed by ``user`` (for discarding it)."""
    row = _open_draft(report=report)
    if row.author_id != user.pk:
        audit_record(
            action=action,
            outcome=DENIED,
            user=user,
            study=row.study,
            source=source,
            detail={**_detail(row), "reason": "author"},
        )
        raise ReportError(
            _("La bozza è di %(name)s: solo chi l'ha aperta può abbandonarla.") % {"name": _person(row.author)},
            code="author",
        )
    return row


def _saved_conflict(row: Report | None) -> ReportConflict:
    if row is None:
        return ReportConflict(_("La bozza non esiste più: è stata scartata."), code="discarded")
    if row.status == Report.Status.SIGNED:
        return ReportConflict(
            _("Il referto è già stato firmato alle %(time)s.") % {"time": _hhmm(row.signed_at)}, code="signed"
        )
    return ReportConflict(
        _("La bozza è stata salvata da %(name)s alle %(time)s: ricarica la bozza.")
        % {"name": _person(row.updated_by or row.author), "time": _hhmm(row.updated_at)}
    )


def report_save(
    *,
    report: Report,
    user: User,
    revision: int,
    clinical_question: str,
    technique: str,
    findings: str,
    conclusion: str,
    source: str = "",
) -> Report:
    """Save the sections of a draft that was read at ``revision``; returns the saved row.

    Any user who may open the study and change reports saves the draft, not
    only its author (``author`` stays who claimed it; ``updated_by`` becomes
    ``user``).

    Raises
    ------
    PermissionDenied
        The user may not open the study or change reports.
    ReportConflict
        Somebody saved (or signed, or discarded) the draft since ``revision``:
        nothing is overwritten, and the message names who saved last and when.
    """
    study = report.study
    _permission_check(
        user=user,
        perm="archive.change_report",
        action="report.save",
        study=study,
        source=source,
        detail=_detail(report),
    )
    row = _open_draft(report=report)
    with transaction.atomic():
        updated = Report.objects.filter(pk=row.pk, status=Report.Status.DRAFT, revision=revision).update(
            clinical_question=clinical_question,
            technique=technique,
            findings=findings,
            conclusion=conclusion,
            revision=revision + 1,
            updated_by=user,
            updated_at=timezone.now(),
        )
        if updated != 1:
            raise _saved_conflict(_reload(row))
        audit_record(
            action="report.save",
            user=user,
            study=study,
            source=source,
            detail={**_detail(row), "revision": revision + 1},
        )
    saved = _reload(row)
    assert saved is not None
    return saved


def report_discard(*, report: Report, user: User, source: str = "") -> None:
    """The author drops an unsigned draft (and with it the claim on the study).

    Only the author: colleagues edit and sign the draft, but the claim is the author's
    (``ReportError`` with ``code="author"`` otherwise, audited as denied).
    """
    study = report.study
    _permission_check(
        user=user,
        perm="archive.change_report",
        action="report.discard",
        study=study,
        source=source,
        detail=_detail(report),
    )
    row = _own_draft(report=report, user=user, action="report.discard", source=source)
    with transaction.atomic():
        # A queryset delete: no signed row can match the filter.
        deleted, _counts = Report.objects.filter(pk=row.pk, status=Report.Status.DRAFT, author_id=user.pk).delete()
        if deleted != 1:
            raise _saved_conflict(_reload(row))
        audit_record(action="report.discard", user=user, study=study, source=source, detail=_detail(row))


def report_amend(*, report: Report, user: User, kind: str, source: str = "") -> Report:
    """Start a correction or an addendum of the signed ``report``: a new draft version.

    A correction (``kind="correction"``) starts from the signed text; an
    addendum (``"addendum"``) keeps only the clinical question. The signed
    version stays as it is and readable; the new one refers to it.
    """
    study = report.study
    _permission_check(
        user=user,
        perm="archive.add_report",
        action="report.amend",
        study=study,
        source=source,
        detail=_detail(report),
    )
    if kind not in (Report.Kind.CORRECTION, Report.Kind.ADDENDUM):
        raise ReportError(_("Tipo di modifica non valido: rettifica o integrazione."), code="invalid")
    signed = _reload(report)
    if signed is None or signed.status != Report.Status.SIGNED:
        raise ReportError(_("Si rettifica o si integra solo un referto firmato."), code="state")
    draft = report_draft(study=study)
    if draft is not None:
        if draft.author_id == user.pk and draft.previous_id == signed.pk and draft.kind == kind:
            return draft
        raise _claimed_conflict(draft)
    latest = report_current(study=study)
    if latest is not None and latest.pk != signed.pk:
        raise ReportConflict(
            _("Esiste una versione più recente (v%(version)s): si rettifica o si integra quella.")
            % {"version": latest.version},
            code="superseded",
        )
    values: dict[str, Any] = {"kind": kind, "previous": signed, "clinical_question": signed.clinical_question}
    if kind == Report.Kind.CORRECTION:
        values.update(technique=signed.technique, findings=signed.findings, conclusion=signed.conclusion)
    new = _draft_create(study=study, user=user, values=values)
    if new.previous_id != signed.pk or new.kind != kind:
        raise _claimed_conflict(new)
    audit_record(
        action="report.amend",
        user=user,
        study=study,
        source=source,
        detail={**_detail(new), "previous": signed.pk, "previous_version": signed.version},
    )
    return new


# --- signing ----------------------------------------------------------------


def _reauthenticate(*, user: Any, password: str, otp: str) -> str:
    """The reason re-authentication failed ("" when it passed)."""
    if not password or not user.check_password(password):
        return "password"
    profile = staff_profile(user)
    secret = profile.totp_secret if profile is not None else ""
    if secret:
        import pyotp

        code = (otp or "").strip().replace(" ", "")
        if not code or not pyotp.TOTP(secret).verify(code, valid_window=1):
            return "otp"
    return ""


def report_sign(
    *,
    report: Report,
    user: User,
    password: str,
    otp: str = "",
    revision: int,
    source: str = "",
) -> Report:
    """Sign the draft ``report`` as read at ``revision``; returns the signed row.

    Any user who may open the study and sign reports signs the draft, not
    only its author: the signer (``user``) is the one whose key signs and
    whose name is on the PDF and in ``signer_name``; ``author`` stays who
    started the draft. Re-authenticates the signer (password, and the TOTP
    code when their staff profile has a secret), makes the PDF, signs it
    (detached CAdES with the signer's own key), stores both files in the
    study's facility tier, then marks the row signed in one conditional
    UPDATE. After commit, ``signals.report_signed`` is sent and, with
    ``PACS_REPORT_ENCAPSULATED_PDF``, a task is queued that ingests the PDF
    into the study as a DICOM Encapsulated PDF instance
    (:func:`report_encapsulated_store`): the request answers once the report
    is durable (its PDF and signature), without writing DICOM.

    Raises
    ------
    PermissionDenied
        The user may not open the study or sign reports.
    ReportError
        ``code="reauth"``: wrong password or code (audited as denied);
        ``empty``, ``signing``, ``storage``: nothing was signed.
    ReportConflict
        The draft changed since ``revision`` (or was signed or discarded).
    """
    study = report.study
    _permission_check(
        user=user,
        perm="archive.sign_report",
        action="report.sign",
        study=study,
        source=source,
        detail=_detail(report),
    )
    row = _open_draft(report=report)
    failed = _reauthenticate(user=user, password=password, otp=otp)
    if failed:
        audit_record(
            action="report.sign",
            outcome=DENIED,
            user=user,
            study=study,
            source=source,
            detail={**_detail(row), "reason": failed},
        )
        if failed == "otp":
            raise ReportError(_("Codice del secondo fattore errato o scaduto: firma non eseguita."), code="reauth")
        raise ReportError(_("Password errata: firma non eseguita."), code="reauth")
    if row.revision != revision:
        raise _saved_conflict(row)
    if not (row.conclusion.strip() or row.findings.strip()):
        raise ReportError(
            _("Il referto è vuoto: scrivi la descrizione o le conclusioni prima di firmare."), code="empty"
        )

    def failure(reason: str, message: str, code: str) -> ReportError:
        audit_record(
            action="report.sign",
            outcome=FAILURE,
            user=user,
            study=study,
            source=source,
            detail={**_detail(row), "reason": reason},
        )
        return ReportError(message, code=code)

    # The slow part, outside any transaction: PDF, signature, files.
    from archive.reporting import signing
    from archive.reporting.booked import booked_exam, facility_contacts
    from archive.reporting.cda import report_cda, user_fiscal_code
    from archive.reporting.pdf import report_pdf
    from archive.reporting.pdfa import PdfError, pdfa3_attach

    booked = booked_exam(study.pk)
    contacts = facility_contacts(study.facility_id)
    signed_at = timezone.now()
    try:
        signer = signing.signer_name(user)
        certificate = signing.signer_certificate_pem(user)
        drawn = report_pdf(report=row, signer_name=signer, signed_at=signed_at, booked=booked, contacts=contacts)
        # The structured report (CDA R2) rides inside the PDF/A-3 the signature covers.
        cda = report_cda(
            report=row,
            signer_name=signer,
            signed_at=signed_at,
            booked=booked,
            contacts=contacts,
            signer=user,
            signer_fiscal_code=user_fiscal_code(user, certificate),
        )
        pdf = pdfa3_attach(drawn, xml=cda, when=signed_at)
        p7m = signing.cades_sign_detached(data=pdf, user=user, signing_time=signed_at)
    except (ValueError, PdfError) as exc:
        # The PDF/A or its CDA could not be made: nothing is signed, nothing stored.
        logger.exception("the PDF/A-3 of report %s failed", row.pk)
        raise failure(
            f"pdfa: {exc}",
            _("Firma non eseguita: il PDF/A del referto non si è potuto comporre (%(reason)s).") % {"reason": exc},
            "signing",
        ) from exc
    except signing.SigningError as exc:
        logger.exception("signing report %s failed", row.pk)
        message = getattr(exc, "message", "") or str(exc)
        raise failure(
            f"signing: {message}", _("Firma non eseguita: %(reason)s") % {"reason": message}, "signing"
        ) from exc
    pdf_sha256 = hashlib.sha256(pdf).hexdigest()
    p7m_sha256 = hashlib.sha256(p7m).hexdigest()
    cda_sha256 = hashlib.sha256(cda).hexdigest()
    tier = storage.facility_tier(study.facility.code)
    try:
        pdf_path = storage.report_relpath(
            study_uid=study.study_instance_uid, version=row.version, sha256=pdf_sha256, extension="pdf"
        )
        p7m_path = storage.report_relpath(
            study_uid=study.study_instance_uid, version=row.version, sha256=p7m_sha256, extension="p7m"
        )
        cda_path = storage.report_relpath(
            study_uid=study.study_instance_uid, version=row.version, sha256=cda_sha256, extension="xml"
        )
        storage.place_bytes(pdf, tier, pdf_path)
        storage.place_bytes(p7m, tier, p7m_path)
        storage.place_bytes(cda, tier, cda_path)
    except storage.StorageError as exc:
        logger.exception("storing report %s failed", row.pk)
        raise failure(
            f"storage: {exc}",
            _("Firma non eseguita: l'archivio non ha potuto salvare il referto (%(reason)s).") % {"reason": exc},
            "storage",
        ) from exc

    encapsulate = bool(settings.PACS_REPORT_ENCAPSULATED_PDF)
    # The instance is ingested after commit (a workstation must never see a
    # PDF whose signing then lost); its UID is fixed now because a signed
    # row never changes again. The rest of the data set derives from the row.
    sop_uid = _new_uid() if encapsulate else ""

    with transaction.atomic():
        updated = Report.objects.filter(pk=row.pk, status=Report.Status.DRAFT, revision=revision).update(
            status=Report.Status.SIGNED,
            signed_at=signed_at,
            signer_name=signer,
            signer_certificate=certificate,
            tier=tier,
            pdf_path=pdf_path,
            pdf_sha256=pdf_sha256,
            pdf_size=len(pdf),
            signature_path=p7m_path,
            signature_sha256=p7m_sha256,
            cda_path=cda_path,
            cda_sha256=cda_sha256,
            encapsulated_sop_instance_uid=sop_uid,
            updated_by=user,
            updated_at=signed_at,
        )
        if updated != 1:
            # The files stay: content-addressed, nothing points at them.
            raise _saved_conflict(_reload(row))
        audit_record(
            action="report.sign",
            user=user,
            study=study,
            source=source,
            detail={**_detail(row), "pdf_sha256": pdf_sha256, "signature_sha256": p7m_sha256, "signer": signer},
        )
        report_pk, study_pk = row.pk, study.pk
        transaction.on_commit(lambda: _signed_notify(report_pk=report_pk, study_pk=study_pk))
        if encapsulate:
            transaction.on_commit(lambda: _encapsulate_enqueue(report_pk=report_pk, user=user, source=source))
    signed = _reload(row)
    assert signed is not None
    return signed


def _signed_notify(*, report_pk: int, study_pk: int) -> None:
    for receiver, result in signals.report_signed.send_robust(sender=Report, report_pk=report_pk, study_pk=study_pk):
        if isinstance(result, Exception):
            logger.error("report_signed receiver %r failed for report %s", receiver, report_pk, exc_info=result)


def _encapsulate_failed(*, report: Report, user: Any, source: str, reason: str) -> None:
    # The report is signed and valid; only its DICOM copy is missing, and
    # report_encapsulate can make it again (same UIDs, same bytes).
    audit_record(
        action="report.encapsulate",
        outcome=FAILURE,
        user=user,
        study=report.study,
        source=source,
        detail={**_detail(report), "reason": reason},
    )


def _encapsulate_enqueue(*, report_pk: int, user: Any, source: str) -> None:
    """Queue the DICOM copy; by name, since the archive's tasks import this module."""
    from celery import current_app

    try:
        current_app.send_task(tasknames.REPORT_ENCAPSULATE, args=[report_pk])
    except Exception as exc:
        # The signing must not look failed to the radiologist for this; the
        # sweep (reports_encapsulation_overdue) queues it again.
        logger.exception("encapsulated PDF of report %s not queued", report_pk)
        report = Report.objects.select_related("study").get(pk=report_pk)
        _encapsulate_failed(report=report, user=user, source=source, reason=f"{NOT_QUEUED}: {exc}")


# --- the follow-ups a broker outage lost --------------------------------------

# At most this many follow-ups queued again by one run of a sweep: the next run takes the rest.
FOLLOWUP_SWEEP_LIMIT = 500
# The start of the audited reason when the copy was not queued (the sweep's
# business), as against a copy the archive refused (audited, not tried again).
NOT_QUEUED = "not queued"


def reports_signed_overdue(*, now: dt.datetime | None = None) -> QuerySet[Report]:
    """The signed versions whose follow-ups should have run by ``now``, oldest first.

    Signed more than ``PACS_REPORT_FOLLOWUP_GRACE_SECONDS`` ago (the tasks
    queued on commit have had their time) and at most
    ``PACS_REPORT_FOLLOWUP_HORIZON_DAYS`` ago: the partial index on
    ``signed_at`` reads only that window, so a run stays short however many
    reports the archive holds. Each app's sweep narrows it to the versions
    whose follow-up it does not find done.
    """
    now = now or timezone.now()
    return Report.objects.filter(
        status=Report.Status.SIGNED,
        signed_at__lt=now - dt.timedelta(seconds=settings.PACS_REPORT_FOLLOWUP_GRACE_SECONDS),
        signed_at__gte=now - dt.timedelta(days=settings.PACS_REPORT_FOLLOWUP_HORIZON_DAYS),
    ).order_by("signed_at", "pk")


def reports_encapsulation_overdue(*, now: dt.datetime | None = None, limit: int = FOLLOWUP_SWEEP_LIMIT) -> list[int]:
    """Signed versions past the grace period whose Encapsulated PDF instance the archive lacks.

    Nothing with ``PACS_REPORT_ENCAPSULATED_PDF`` off. A version signed
    without it has no SOPInstanceUID and is never one; a copy the archive
    refused (audited ``report.encapsulate`` with the refusal's reason) is left
    to the operators, since queuing it again would only refuse it again.
    """
    if not settings.PACS_REPORT_ENCAPSULATED_PDF:
        return []
    stored = Instance.objects.filter(sop_instance_uid=OuterRef("encapsulated_sop_instance_uid"))
    # Compared as text: PostgreSQL has no jsonb = bigint, SQLite no JSON type to cast to.
    refused = (
        AuditEvent.objects.filter(study_id=OuterRef("study_id"), action="report.encapsulate", outcome=FAILURE)
        .annotate(report_ref=Cast(KeyTextTransform("report", "detail"), CharField()))
        .filter(report_ref=Cast(OuterRef("pk"), CharField()))
        .exclude(detail__reason__startswith=NOT_QUEUED)
    )
    return list(
        reports_signed_overdue(now=now)
        .exclude(encapsulated_sop_instance_uid="")
        .exclude(Exists(stored))
        .exclude(Exists(refused))
        .values_list("pk", flat=True)[:limit]
    )


# --- the signed files ---------------------------------------------------------


def report_file(*, report: Report, which: str) -> bytes:
    """The signed report's PDF (``"pdf"``), detached signature (``"p7m"``) or CDA (``"cda"``), checked.

    The PDF is the PDF/A-3 that carries the CDA; the CDA is also kept on its
    own beside it (``"cda"``: missing for reports signed before the CDA existed).

    Raises
    ------
    ReportError
        Not signed, the file is missing, unreadable, or its SHA-256 is not
        the one recorded at signing (``code="damaged"``).
    """
    if which not in ("pdf", "p7m", "cda"):
        raise ReportError(_("File del referto sconosciuto."), code="invalid")
    if report.status != Report.Status.SIGNED:
        raise ReportError(_("Il referto non è firmato."), code="state")
    relpath, expected = {
        "pdf": (report.pdf_path, report.pdf_sha256),
        "p7m": (report.signature_path, report.signature_sha256),
        "cda": (report.cda_path, report.cda_sha256),
    }[which]
    if not relpath:
        raise ReportError(_("Il file del referto non si trova nell'archivio."), code="missing")
    try:
        fh = storage.open_copy(report.tier, relpath)
        if fh is None:
            logger.error("report %s: %s missing at %s/%s", report.pk, which, report.tier, relpath)
            raise ReportError(_("Il file del referto non si trova nell'archivio."), code="missing")
        with fh:
            data = fh.read()
    except (storage.StorageError, OSError) as exc:
        logger.exception("report %s: cannot read %s", report.pk, relpath)
        raise ReportError(_("Il file del referto non si può leggere."), code="storage") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        logger.error("report %s: %s at %s/%s does not match its SHA-256", report.pk, which, report.tier, relpath)
        raise ReportError(_("Il file del referto è danneggiato: non corrisponde a quello firmato."), code="damaged")
    return data


def _same_certificate(a: str, b: str) -> bool:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(a.encode()) == x509.load_pem_x509_certificate(b.encode())
    except ValueError:
        return a.strip() == b.strip()


def report_verify(*, report: Report) -> SignatureCheck:
    """Check a signed report: its files against the recorded hashes, then the CAdES signature."""
    from archive.reporting import signing

    def refused(reason: str) -> SignatureCheck:
        return signing.SignatureCheck(
            ok=False,
            reason=reason,
            signer_subject="",
            signer_certificate_pem=report.signer_certificate,
            signing_time=None,
        )

    if report.status != Report.Status.SIGNED:
        return refused(_("Il referto non è firmato."))
    try:
        pdf = report_file(report=report, which="pdf")
        p7m = report_file(report=report, which="p7m")
    except ReportError as exc:
        return refused(exc.message)
    check = signing.cades_verify_detached(data=pdf, signature=p7m)
    if (
        check.ok
        and report.signer_certificate
        and check.signer_certificate_pem
        and not _same_certificate(check.signer_certificate_pem, report.signer_certificate)
    ):
        return refused(_("La firma è valida ma il certificato non è quello registrato alla firma."))
    return check


# --- the DICOM copy ---------------------------------------------------------


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _derived_uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=list(parts)))


def encapsulated_dataset(*, report: Report, pdf: bytes) -> Dataset:
    """The signed report as a DICOM Encapsulated PDF instance of its study.

    Everything derives from the signed row, so the same report always gives
    the same data set (a retry stores nothing new).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    study = report.study
    sop_uid = report.encapsulated_sop_instance_uid
    signed_at = timezone.localtime(report.signed_at)
    date, time = signed_at.strftime("%Y%m%d"), signed_at.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient and study: as the archive indexed them.
    ds.PatientName = study.patient_name
    ds.PatientID = study.dicom_patient_id
    if study.issuer_of_patient_id:
        ds.IssuerOfPatientID = study.issuer_of_patient_id
    ds.PatientBirthDate = study.patient_birth_date.strftime("%Y%m%d") if study.patient_birth_date else ""
    ds.PatientSex = study.patient_sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.StudyID = study.study_id
    ds.StudyDescription = study.study_description
    ds.ReferringPhysicianName = study.referring_physician_name
    # Encapsulated Document Series, one per report version.
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = _derived_uid(sop_uid, "series")
    ds.SeriesNumber = ENCAPSULATED_SERIES_BASE + report.version
    ds.SeriesDescription = "Referto firmato"
    # General and SC Equipment.
    ds.Manufacturer = "PACS regionale"
    ds.ConversionType = "WSD"
    # Encapsulated Document.
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = signed_at.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    # Fixed Italian, not the active language: the data set is archived for ever.
    suffixes: dict[str, str] = {Report.Kind.CORRECTION: " (rettifica)", Report.Kind.ADDENDUM: " (integrazione)"}
    kind = suffixes.get(report.kind, "")
    title = f"Referto radiologico{kind}"
    ds.DocumentTitle = f"{title} v{report.version} - {report.signer_name}"[:64]
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic imaging study"
    ds.ConceptNameCodeSequence = [concept]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + b"\x00" if len(pdf) % 2 else pdf
    return ds


def report_encapsulated_store(*, report_pk: int) -> str:
    """The work of the task queued by :func:`report_sign`: the report's Encapsulated PDF
    instance, stored unless the archive holds it already; its SOPInstanceUID ("" when
    the report has none, or its copy was refused: audited as ``report.encapsulate``).

    A redelivered task (its worker died after storing, before acknowledging)
    finds the instance and stores nothing again.

    Raises
    ------
    django.db.OperationalError, django.db.InterfaceError, storage.StorageError
        Transient: the task tries again.
    """
    report = Report.objects.select_related("study", "study__facility", "updated_by").filter(pk=report_pk).first()
    if report is None or report.status != Report.Status.SIGNED or not report.encapsulated_sop_instance_uid:
        return ""
    uid = report.encapsulated_sop_instance_uid
    if Instance.objects.filter(sop_instance_uid=uid).exists():
        return uid
    try:
        return report_encapsulate(report=report)
    except (OperationalError, InterfaceError, storage.StorageError):
        raise
    except Exception as exc:
        logger.exception("encapsulated PDF of report %s not stored", report_pk)
        # Recorded as the signer's (the row's last writer is who signed it).
        _encapsulate_failed(
            report=report, user=report.updated_by, source="", reason=getattr(exc, "message", "") or str(exc)
        )
        return ""


def report_encapsulate(*, report: Report) -> str:
    """Store the signed PDF in the study as its Encapsulated PDF instance; returns the SOPInstanceUID.

    Idempotent: the data set derives from the signed row, so a second call
    finds the same bytes already archived.
    """
    from pydicom.filewriter import dcmwrite

    from archive.ingest import CONFLICT, IngestError, instance_ingest

    if report.status != Report.Status.SIGNED or not report.encapsulated_sop_instance_uid:
        raise ReportError(_("Il referto non prevede una copia DICOM."), code="state")
    pdf = report_file(report=report, which="pdf")
    ds = encapsulated_dataset(report=report, pdf=pdf)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    path = storage.incoming_dir() / f"{uuid.uuid4().hex}.dcm"
    try:
        result = instance_ingest(
            path=path, facility=report.study.facility, owned=True, data=buffer.getvalue(), calling_ae=""
        )
    except IngestError as exc:
        logger.exception("encapsulated PDF of report %s refused", report.pk)
        raise ReportError(
            _("La copia DICOM del referto non è stata archiviata: %(reason)s") % {"reason": exc.reason},
            code="storage",
        ) from exc
    if result.outcome == CONFLICT:
        raise ReportError(_("La copia DICOM del referto è in conflitto con un oggetto archiviato."), code="storage")
    return result.sop_instance_uid
