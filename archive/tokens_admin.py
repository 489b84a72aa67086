"""The API tokens in the admin: seen and revoked, never made there.

django-rest-knox's own admin creates a token for any account, with no expiry
if left blank, and shows its key in a message: that would bypass who may hold
one (staff and service accounts, ``archive.api_tokens``) and the expiry. Here
a token can only be listed and deleted (revoked); clients get theirs at
``POST /api/token/``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from knox.models import AuthToken

if admin.site.is_registered(AuthToken):
    admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class AuthTokenAdmin(admin.ModelAdmin):
    # knox's fields have no verbose names ("Created", "Expiry" in any language): shown
    # through these, named in Italian like the rest of the admin.
    list_display = ("key_start", "owner", "created_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("token_key", "user__username")
    ordering = ("-created",)
    fields = ("key_start", "owner", "created_at", "expires_at")
    readonly_fields = fields

    @admin.display(description=_("inizio del token"))
    def key_start(self, obj: AuthToken) -> str:
        return f"{obj.token_key[:8]}…"

    @admin.display(description=_("utente"), ordering="user__username")
    def owner(self, obj: AuthToken) -> str:
        return str(obj.user)

    @admin.display(description=_("creato il"), ordering="created")
    def created_at(self, obj: AuthToken) -> Any:
        return obj.created

    @admin.display(description=_("scade il"), ordering="expiry")
    def expires_at(self, obj: AuthToken) -> Any:
        return obj.expiry or _("mai")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
