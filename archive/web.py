"""Small pieces every web edge of the archive and the apps above it share:
who is asking from where, and the permission gate of a staff page or an API view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from rest_framework.permissions import SAFE_METHODS, BasePermission


def client_ip(request: HttpRequest) -> str:
    """The client's address for the audit log.

    REMOTE_ADDR only: X-Forwarded-For is whatever the client wrote unless a
    proxy we trust replaced it, and no trusted proxy is configured; behind a
    reverse proxy this records the proxy's address, never a forged one.
    """
    return str(request.META.get("REMOTE_ADDR") or "")


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
