"""Small pieces every web edge of the archive and the apps above it share:
who is asking from where, and the permission gate of a staff page or an API view."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.utils.http import content_disposition_header
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def address_in(address: str, networks: Iterable[str]) -> bool:
    """Whether ``address`` is one of ``networks`` (addresses or CIDR blocks); False for garbage."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for network in networks:
        try:
            if ip in ipaddress.ip_network(network, strict=False):
                return True
        except ValueError:
            continue
    return False


def client_ip(request: HttpRequest) -> str:
    """The client's address, for the audit log and the login lockout (django-axes).

    REMOTE_ADDR, unless it is one of ``PACS_TRUSTED_PROXIES``: then the last
    address of X-Forwarded-For that is not itself a trusted proxy (the one our
    own proxy saw; what the client wrote before it is not believed). With no
    trusted proxy configured X-Forwarded-For is ignored: behind a reverse proxy
    this records the proxy's address, never a forged one.
    """
    remote = str(request.META.get("REMOTE_ADDR") or "")
    proxies = getattr(settings, "PACS_TRUSTED_PROXIES", ())
    if not proxies or not address_in(remote, proxies):
        return remote
    forwarded = [a.strip() for a in str(request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",") if a.strip()]
    for address in reversed(forwarded):
        if address_in(address, proxies):
            continue
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            break  # a proxy we trust wrote garbage: keep what we know
    return remote


# Separators and characters some system refuses in a file name; quotes and
# semicolons would be harmless once quoted, but a name is safer without them.
_FILENAME_UNSAFE = re.compile(r'[\\/:*?"<>|;]+')
# Unicode "other" categories: controls, format characters (a right-to-left
# override turns "referto-\u202efdp.exe" into "referto-exe.pdf" on screen),
# surrogates, private use, unassigned; and the line and paragraph separators.
_FILENAME_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_FILENAME_MAX = 150


def download_filename(name: str, *, fallback: str = "file") -> str:
    """A file name for a download, from parts that may have come from outside
    (an AccessionNumber a modality sent, a label typed by an operator).

    Path separators, quotes, semicolons and the characters Windows refuses become
    ``_``; control and format characters are dropped; letters outside ASCII stay
    (:func:`content_disposition` sends them as RFC 6266 ``filename*``).
    """
    name = unicodedata.normalize("NFC", str(name))
    name = "".join(c for c in name if unicodedata.category(c) not in _FILENAME_DROPPED_CATEGORIES)
    name = _FILENAME_UNSAFE.sub("_", name).strip(" .")
    return name[-_FILENAME_MAX:] if len(name) > _FILENAME_MAX else (name or fallback)


def content_disposition(filename: str, *, as_attachment: bool = True) -> str:
    """The ``Content-Disposition`` value for a download named ``filename`` (made safe by
    :func:`download_filename`), built by Django's ``content_disposition_header``: the
    name is quoted or RFC 5987-encoded, never pasted into the header."""
    return str(content_disposition_header(as_attachment, download_filename(filename)))


def perms_required(*perms: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A staff page's gate: logged in (else the login page), then ``perms`` (else 403)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        return login_required(permission_required(perms, raise_exception=True)(view))

    return decorate


class HasModelPerms(BasePermission):
    """The Django model permissions the view lists for the request's method
    (``required_perms``; HEAD and OPTIONS need what GET needs)."""

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method not in SAFE_METHODS and not hasattr(view, request.method.lower()):
            return True  # DRF answers 405
        method = "GET" if request.method in SAFE_METHODS else request.method
        # A method the view forgot to list is refused, not open.
        return bool(user.has_perms(view.required_perms.get(method, ("__denied__",))))


# What a gate guarantees, said to the type checker (django-stubs' own advice):
# Django and DRF build plain requests whose user may be anonymous; a view behind
# ``login_required``, :func:`perms_required` or ``staff_member_required``, or an
# API view whose permission classes refuse the anonymous, annotates its request
# with one of these, and the services that record who acted take a ``User``.
class AuthenticatedHttpRequest(HttpRequest):
    """A page's request past a login gate: its user is an account. Only an annotation."""

    user: User


class AuthenticatedRequest(Request):
    """An API request past a permission class that refuses the anonymous. Only an annotation."""

    user: User
