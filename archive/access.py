"""The access policy: which studies a principal may see, and whether it may open this one.

One module answers for every way in (staff pages, the work list and priors,
the admin, the REST API, DICOMweb, DIMSE, exports and zips). No path keeps
its own copy of the rule: each turns who is asking into a :class:`Principal`
(:func:`principal_for_user`, :func:`principal_for_request`,
:func:`principal_for_node`, :data:`SYSTEM`) and asks :func:`visible_q` for
the condition its query needs, or :func:`study_visible` for one study.

The rule, per principal:

* **Staff** (a logged-in user who is not a citizen): nothing without
  ``archive.view_study``; then the studies of their health authority only
  (``StaffProfile.authority``) unless the profile's ``cross_authority`` or
  ``PACS_REPORT_CROSS_AUTHORITY`` opens the region; and never a study the
  patient concealed (*oscuramento*), unless the user holds a live emergency
  access for that patient or authored a report of that study ("a hidden
  document stays visible only to the citizen and its author").
* **DICOM node** (a ``RemoteNode`` calling the listener): the studies of its
  scope (its facility, its facility's authority, or the region), never a
  concealed one. An unknown AE let in by ``PACS_DICOM_ACCEPT_UNKNOWN_AE`` may
  store and sees nothing.
* **Citizen**: their own studies and those of the people whose delegation
  in force they hold; concealment does not apply (they chose it).
* **System**: a background process (lifecycle, preservation, packaging for a
  citizen already checked) sees everything.
* **Nobody**: anonymous; sees nothing.

A study whose every instance a rejection note withdrew (IOCM,
:mod:`archive.rejection`) does not exist for any principal but the system.

A concealed or out-of-scope study does not exist for the principal: it is
absent from lists and counts, and opening it answers as for a study that is
not in the archive (404, "no such study"), never "hidden".

The concealment and the emergency accesses live in the portal app, which the
archive may not import (docs/ARCHITECTURE.md: dependencies point down). The portal
registers a :class:`PolicyExtension` at start-up (``portal.apps.ready``);
with none registered (an archive without the portal) nothing is concealed
and nobody is a citizen.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Value
from django.http import Http404
from django.utils.translation import gettext_lazy as _

from kernel.errors import NotFound
from kernel.querycache import Slot, compiled

from .models import Facility, Instance, Patient, RemoteNode, Report, StaffProfile, Study

if TYPE_CHECKING:
    from django.http import HttpRequest

VIEW_STUDY_PERM = "archive.view_study"


class Kind(enum.Enum):
    STAFF = "staff"
    NODE = "node"
    CITIZEN = "citizen"
    SYSTEM = "system"
    NOBODY = "nobody"


@dataclass(frozen=True)
class Principal:
    """Who is asking, with everything the rule needs precomputed (a few ids, no querysets).

    ``authority_id``: the only health authority whose studies it sees (None: all).
    ``facility_id``: the only facility whose studies it sees (a node of facility scope).
    ``patient_ids``: a citizen's own and delegators' patients; for staff, the
    patients of their live emergency accesses.
    For staff, ``user_id`` is also the author whose reports' studies stay
    visible when concealed (the condition is in the query, not a list here).
    """

    kind: Kind
    name: str = ""
    user_id: int | None = None
    authority_id: int | None = None
    facility_id: int | None = None
    patient_ids: frozenset[int] = field(default_factory=frozenset)
    sees_nothing: bool = False

    @property
    def is_staff(self) -> bool:
        return self.kind is Kind.STAFF

    @property
    def is_citizen(self) -> bool:
        return self.kind is Kind.CITIZEN

    @property
    def is_node(self) -> bool:
        return self.kind is Kind.NODE

    @property
    def concealment_applies(self) -> bool:
        """Whether concealed studies are hidden from this principal (professionals and their devices)."""
        return self.kind in (Kind.STAFF, Kind.NODE)


NOBODY = Principal(Kind.NOBODY, name="anonymous", sees_nothing=True)
SYSTEM = Principal(Kind.SYSTEM, name="system")


def system(name: str) -> Principal:
    """A named background process (it sees everything)."""
    return Principal(Kind.SYSTEM, name=name)


# --- the portal's part: concealment, emergency accesses, citizens and delegations -----


class PolicyExtension(Protocol):
    def concealed_exists(self, study_ref: str, *, author_id: int | None = None) -> Exists:
        """An ``Exists`` that is true when the study at ``OuterRef(study_ref)`` is concealed now
        (and, with ``author_id``, that user wrote none of its reports: "a hidden document
        stays visible to its author")."""
        ...

    def concealed_ids(self, study_ids: Iterable[int]) -> set[int]:
        """The ids among ``study_ids`` of the studies concealed now."""
        ...

    def emergency_patient_ids(self, user: Any) -> set[int]:
        """The patients ``user`` holds a live emergency access for."""
        ...

    def citizen_patient_ids(self, user: Any) -> set[int] | None:
        """For a citizen's account: the patients whose studies they may see (self and delegators
        in force); None when ``user`` is not a citizen."""
        ...

    # Optional: ``citizen_exists(user_ref) -> Exists``, true when the user at ``OuterRef(user_ref)``
    # has a citizen's account (so that a member of staff is told apart in the query that reads
    # their profile).
    # Optional: ``emergency_exists(user_ref, *, window=None) -> Exists``, true when the user at
    # ``OuterRef(user_ref)`` holds a live emergency access (so that the patients' query is made only
    # for those who do); with ``emergency_window() -> (since, now)``, live means granted in that window
    # (passed as ``window``: the query's SQL then holds no moment, and is compiled once).
    # Optional: ``state_version() -> str``, a value that changes whenever a study is
    # concealed or revealed (:func:`visibility_key` uses it when present).


_extension: PolicyExtension | None = None


def extension_register(extension: PolicyExtension | None) -> None:
    """Install the portal's part of the policy (None removes it)."""
    global _extension
    _extension = extension


def policy_extension() -> PolicyExtension | None:
    """The portal's part of the policy now installed (it shapes :func:`visible_q`'s SQL:
    a key of compiled queries names it, kernel.querycache)."""
    return _extension


# --- principals --------------------------------------------------------------------


def staff_profile(user: Any) -> StaffProfile | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return StaffProfile.objects.filter(user_id=user.pk).first()


def authority_restriction(user: Any) -> int | None:
    """The id of the only health authority whose studies ``user`` opens, or None for all."""
    profile = staff_profile(user)
    if (
        profile is None
        or profile.authority_id is None
        or profile.cross_authority
        or bool(settings.PACS_REPORT_CROSS_AUTHORITY)
    ):
        return None
    return profile.authority_id


def principal_for_user(user: Any) -> Principal:
    """The principal of a web request's user: nobody, a citizen or a member of staff.

    Every request builds one, so a member of staff costs one query: who they are
    (a citizen's account? their staff profile? a live emergency access?), and a
    second for the patients of their emergency accesses only when they hold one.
    A user an API token brought has that first query's answers with it already
    (:func:`principal_facts`, asked in the token's own query): no query at all.
    """
    if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", True):
        return NOBODY
    name = str(user.get_username())
    who = getattr(user, PRINCIPAL_FACTS, None)
    if who is None:
        who = _principal_facts_read(user)
    if _extension is not None and (who.get("is_citizen") or not hasattr(_extension, "citizen_exists")):
        citizen = _extension.citizen_patient_ids(user)
        if citizen is not None:
            return Principal(Kind.CITIZEN, name=name, user_id=user.pk, patient_ids=frozenset(citizen))
    if not user.has_perm(VIEW_STUDY_PERM):
        return Principal(Kind.STAFF, name=name, user_id=user.pk, sees_nothing=True)
    # Their patients are read only when the first query found a live emergency access.
    emergency = (
        _extension.emergency_patient_ids(user) if _extension is not None and who.get("has_emergency", True) else set()
    )
    authority_id = who.get("authority_id")
    if who.get("cross_authority") or bool(settings.PACS_REPORT_CROSS_AUTHORITY):
        authority_id = None
    return Principal(
        Kind.STAFF,
        name=name,
        user_id=user.pk,
        authority_id=authority_id,
        patient_ids=frozenset(emergency),
    )


# What principal_for_user reads about a user, in its own query or in another that reads the user.
_FACTS = ("is_citizen", "has_emergency", "authority_id", "cross_authority")
# The attribute of a user object that holds them when another query brought them (principal_facts_keep).
PRINCIPAL_FACTS = "_pacs_principal_facts"


def principal_facts(*, user_ref: str, prefix: str, since: Any = None, now: Any = None) -> dict[str, Any]:
    """The annotations that say what :func:`principal_for_user` needs to know of a user, named
    ``pacs_<fact>``, for a query on users (``user_ref="pk"``, ``prefix=""``) or on rows that name
    one (``user_ref="user_id"``, ``prefix="user__"``). ``since`` and ``now``: the emergency
    window, slots of a compiled query (:func:`principal_facts_slots`)."""
    citizen_exists = getattr(_extension, "citizen_exists", None)
    emergency_exists = getattr(_extension, "emergency_exists", None)
    if emergency_exists is None:
        has_emergency: Any = Value(True)
    elif since is not None:
        has_emergency = emergency_exists(user_ref, window=(since, now))
    else:
        has_emergency = emergency_exists(user_ref)
    return {
        "pacs_is_citizen": citizen_exists(user_ref) if citizen_exists is not None else Value(False),
        "pacs_has_emergency": has_emergency,
        "pacs_authority_id": F(f"{prefix}staff_profile__authority_id"),
        "pacs_cross_authority": F(f"{prefix}staff_profile__cross_authority"),
    }


def principal_facts_slots() -> tuple[list[Slot], dict[str, Any]] | None:
    """What :func:`principal_facts` needs as slots of a compiled query, and their values now:
    the emergency window (``since``, ``now``), or nothing when the policy has no emergency
    condition; None when it cannot be compiled (the condition holds the moment in its SQL:
    no window to pass)."""
    if getattr(_extension, "emergency_exists", None) is None:
        return [], {}
    window = getattr(_extension, "emergency_window", None)
    if window is None:
        return None
    since, now = window()
    return list(_WINDOW), {"since": since, "now": now}


def principal_facts_keep(user: Any, row: Any) -> None:
    """Keep on ``user`` the facts :func:`principal_facts` read with ``row`` (for this request's
    :func:`principal_for_user`; :func:`principal_forget` drops them)."""
    setattr(user, PRINCIPAL_FACTS, {fact: getattr(row, f"pacs_{fact}") for fact in _FACTS})


def _principal_facts_read(user: Any) -> dict[str, Any]:
    def build(user: int, since: Any = None, now: Any = None) -> QuerySet[Any]:
        facts = principal_facts(user_ref="pk", prefix="", since=since, now=now)
        return (
            get_user_model()._default_manager.filter(pk=user).annotate(**facts).values_list(*facts).order_by("pk")[:1]
        )

    slots = principal_facts_slots()
    if slots is None:  # its SQL holds the moment: built each time
        rows = list(build(user.pk))
    else:
        window, values = slots
        query = compiled(("archive.access.principal_for_user", _extension), [_USER, *window], build)
        rows = query.rows(user=user.pk, **values)
    return dict(zip(_FACTS, rows[0], strict=True)) if rows else {}


_USER = Slot("user", int)
_WINDOW = [Slot("since", dt.datetime), Slot("now", dt.datetime)]

_REQUEST_ATTR = "_pacs_principal"


def principal_for_request(request: HttpRequest | Any) -> Principal:
    """:func:`principal_for_user` of the request's user, computed once per request."""
    cached = getattr(request, _REQUEST_ATTR, None)
    user = getattr(request, "user", None)
    if cached is not None and cached[0] == getattr(user, "pk", None):
        return cached[1]
    principal = principal_for_user(user)
    try:
        setattr(request, _REQUEST_ATTR, (getattr(user, "pk", None), principal))
    except AttributeError:
        pass
    return principal


def principal_forget(request: HttpRequest | Any) -> None:
    """Drop the request's cached principal (after granting an emergency access, say), and
    what its user's token brought of it."""
    if hasattr(request, _REQUEST_ATTR):
        delattr(request, _REQUEST_ATTR)
    user = getattr(request, "user", None)
    if hasattr(user, PRINCIPAL_FACTS):
        delattr(user, PRINCIPAL_FACTS)


def principal_for_node(node: RemoteNode | None, *, facility: Facility | None = None) -> Principal:
    """The principal of a DICOM peer: a registered node sees its scope; an unknown AE (None) nothing."""
    if node is None:
        return Principal(Kind.NODE, name="unknown AE", sees_nothing=True)
    facility = facility or node.facility
    scope = getattr(node, "scope", RemoteNode.Scope.FACILITY)
    name = f"{node.ae_title}@{facility.code}"
    if scope == RemoteNode.Scope.REGION:
        return Principal(Kind.NODE, name=name)
    if scope == RemoteNode.Scope.AUTHORITY:
        return Principal(Kind.NODE, name=name, authority_id=facility.authority_id)
    return Principal(Kind.NODE, name=name, facility_id=facility.pk)


# --- the rule as a query condition and for one study --------------------------------


def _ref(path: str) -> str:
    """``OuterRef`` name of the study for a model that reaches it through ``path``."""
    return path[:-2] if path else "pk"


def withdrawn_q(path: str = "") -> Q:
    """True for a study whose every instance a rejection note withdrew (IOCM,
    archive.rejection): it disappears with its images, for every principal but the
    system. A study with no instance yet (none withdrawn) is not one."""
    withdrawn = Instance.all_objects.filter(series__study=OuterRef(_ref(path)), withdrawn_at__isnull=False)
    return Q(**{f"{path}number_of_instances": 0}) & Q(Exists(withdrawn))


def visible_q(principal: Principal, path: str = "", *, include_withdrawn: bool = False) -> Q:
    """The condition on a queryset whose model reaches ``Study`` through ``path``
    (``""`` for Study, ``"study__"`` for Series or Report, ``"series__study__"``
    for Instance) that keeps only the studies ``principal`` may see.

    ``include_withdrawn``: keep the studies rejection notes emptied (the notes'
    own admin pages, which show what was withdrawn)."""
    if principal.sees_nothing or principal.kind is Kind.NOBODY:
        return Q(**{f"{path}pk__in": []})
    if principal.kind is Kind.SYSTEM:
        return Q()
    if principal.kind is Kind.CITIZEN:
        q = Q(**{f"{path}patient_id__in": sorted(principal.patient_ids)})
        return q if include_withdrawn else q & ~withdrawn_q(path)
    q = Q() if include_withdrawn else ~withdrawn_q(path)
    if principal.facility_id is not None:
        q &= Q(**{f"{path}facility_id": principal.facility_id})
    if principal.authority_id is not None:
        q &= Q(**{f"{path}facility__authority_id": principal.authority_id})
    if _extension is not None:
        author = principal.user_id if principal.kind is Kind.STAFF else None
        shown = ~Q(_extension.concealed_exists(_ref(path), author_id=author))
        if principal.patient_ids:
            shown |= Q(**{f"{path}patient_id__in": sorted(principal.patient_ids)})
        q &= shown
    return q


def studies_visible(principal: Principal, base: QuerySet[Study] | None = None) -> QuerySet[Study]:
    """The studies ``principal`` may see (``base`` narrowed, or every study)."""
    qs = base if base is not None else Study.objects.all()
    return qs.filter(visible_q(principal))


def filter_visible(qs: QuerySet[Any], principal: Principal, path: str) -> QuerySet[Any]:
    """``qs`` narrowed to the rows whose study ``principal`` may see (see :func:`visible_q`)."""
    return qs.filter(visible_q(principal, path))


def patients_visible(principal: Principal, base: QuerySet[Patient] | None = None) -> QuerySet[Patient]:
    """The patients whose data ``principal`` may read: a citizen's own and delegators';
    for staff and nodes restricted to an authority or facility, those with a visible
    study there; for regional staff, everyone (the region's registry)."""
    qs = base if base is not None else Patient.objects.all()
    if principal.sees_nothing or principal.kind is Kind.NOBODY:
        return qs.none()
    if principal.kind is Kind.SYSTEM:
        return qs
    if principal.kind is Kind.CITIZEN:
        return qs.filter(pk__in=sorted(principal.patient_ids))
    if principal.authority_id is None and principal.facility_id is None:
        return qs
    return qs.filter(Exists(studies_visible(principal).filter(patient_id=OuterRef("pk"))))


def any_q(*conditions: Q) -> Q:
    """The OR of ``conditions``, where an empty ``Q()`` (what these functions answer for
    "everything") stays "everything": Django drops an empty Q from an OR, which
    would turn ``Q(study__isnull=True) | visible_q(...)`` into "no study" alone."""
    if any(not c for c in conditions):
        return Q()
    result = Q()
    for c in conditions:
        result = c if not result else result | c
    return result


def facility_visible_q(principal: Principal, path: str = "facility__") -> Q:
    """The condition on rows tied to a facility but to no study (a booking not yet
    performed, a conflict whose study is not indexed): the facility is within
    ``principal``'s scope. ``path`` reaches ``Facility`` (``"facility__"``)."""
    if principal.sees_nothing or principal.kind in (Kind.NOBODY, Kind.CITIZEN):
        return Q(pk__in=[])
    if principal.kind is Kind.SYSTEM:
        return Q()
    q = Q()
    if principal.facility_id is not None:
        q &= Q(**{f"{path}pk": principal.facility_id})
    if principal.authority_id is not None:
        q &= Q(**{f"{path}authority_id": principal.authority_id})
    return q


def patient_visible_q(principal: Principal, path: str = "") -> Q:
    """The condition on a queryset whose model reaches ``Patient`` through ``path``
    (``""`` for Patient, ``"patient__"`` for an audit event) that keeps the patients
    of :func:`patients_visible`."""
    if principal.sees_nothing or principal.kind is Kind.NOBODY:
        return Q(**{f"{path}pk__in": []})
    if principal.kind is Kind.SYSTEM:
        return Q()
    if principal.kind is Kind.CITIZEN:
        return Q(**{f"{path}pk__in": sorted(principal.patient_ids)})
    if principal.authority_id is None and principal.facility_id is None:
        return Q()
    return Q(**{f"{path}pk__in": studies_visible(principal).values("patient_id")})


def uid_visible_q(principal: Principal, field: str = "study_instance_uid") -> Q:
    """The condition on rows that name a study only by its StudyInstanceUID (``field``):
    true unless a study with that UID is archived and ``principal`` may not see it.
    A UID the archive does not hold names nothing, so it hides nothing."""
    if principal.kind is Kind.SYSTEM:
        return Q()
    hidden = Study.objects.filter(study_instance_uid=OuterRef(field)).exclude(visible_q(principal))
    return ~Q(Exists(hidden))


def visibility_key(principal: Principal) -> str:
    """A short key that changes whenever what ``principal`` sees may have changed: its
    kind, scope, emergency accesses and authored studies, and the state of the
    concealments. For caches of values computed over the visible rows (an admin
    filter's choices): a value of a study hidden since must not linger."""
    parts = [
        principal.kind.value,
        str(principal.sees_nothing),
        str(principal.authority_id),
        str(principal.facility_id),
        ",".join(map(str, sorted(principal.patient_ids))),
        str(principal.user_id if principal.kind is Kind.STAFF else ""),
    ]
    version = getattr(_extension, "state_version", None)
    if principal.concealment_applies and version is not None:
        parts.append(str(version()))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class Verdict(enum.Enum):
    VISIBLE = "visible"
    NO_PERMISSION = "permission"  # staff without archive.view_study, anonymous, an unknown AE
    OUT_OF_SCOPE = "authority"  # another health authority or facility, or another citizen's
    CONCEALED = "concealed"  # the patient hid it (never said to the principal)
    WITHDRAWN = "withdrawn"  # every instance withdrawn by a rejection note (archive.rejection)


def study_verdict(principal: Principal, study: Study) -> Verdict:
    """Whether ``principal`` may open ``study``, and if not, why (for the audit log only:
    every refusal answers as for a study that does not exist)."""
    if principal.kind is Kind.SYSTEM:
        return Verdict.VISIBLE
    if principal.sees_nothing or principal.kind is Kind.NOBODY:
        return Verdict.NO_PERMISSION
    if study.number_of_instances == 0 and Study.objects.filter(withdrawn_q(), pk=study.pk).exists():
        return Verdict.WITHDRAWN
    if principal.kind is Kind.CITIZEN:
        return Verdict.VISIBLE if study.patient_id in principal.patient_ids else Verdict.OUT_OF_SCOPE
    if principal.facility_id is not None and study.facility_id != principal.facility_id:
        return Verdict.OUT_OF_SCOPE
    if principal.authority_id is not None:
        authority_id = Facility.objects.filter(pk=study.facility_id).values_list("authority_id", flat=True).first()
        if authority_id != principal.authority_id:
            return Verdict.OUT_OF_SCOPE
    if (
        _extension is not None
        and study.patient_id not in principal.patient_ids
        and _extension.concealed_ids([study.pk])
        and not (
            principal.kind is Kind.STAFF
            and Report.objects.filter(study_id=study.pk, author_id=principal.user_id).exists()
        )
    ):
        return Verdict.CONCEALED
    return Verdict.VISIBLE


def study_visible(principal: Principal, study: Study) -> bool:
    return study_verdict(principal, study) is Verdict.VISIBLE


class StudyNotVisible(Http404, NotFound):
    """The principal may not open the study: answered exactly as a study that is not in
    the archive (a page's 404, an API's ``not_found``), whatever the reason, which only
    the audit log keeps."""

    def __init__(self, verdict: Verdict | None = None) -> None:
        super().__init__(str(_("Lo studio richiesto non esiste o non è accessibile.")))
        self.verdict = verdict


def studies_concealed(study_ids: Iterable[int]) -> set[int]:
    """The ids among ``study_ids`` of the studies concealed now (empty with no extension).

    For processes that must know (preservation metadata, the citizen's own
    pages); never to be shown to a professional."""
    if _extension is None:
        return set()
    ids = [int(i) for i in study_ids]
    return _extension.concealed_ids(ids) if ids else set()
