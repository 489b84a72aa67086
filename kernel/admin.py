"""What the admin pages of every app's alerts share: no adding or deleting
(the system raises alerts), and the action that acknowledges them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from kernel.alerts import AlertQuerySet

if TYPE_CHECKING:
    from django.contrib.admin.options import _ActionCallable


class AlertAdminMixin:
    """The admin of a :class:`kernel.alerts.Alert`: alerts are raised by the system,
    never added or deleted here; staff acknowledge them with an action."""

    actions: Sequence[_ActionCallable[Any, Any] | str] | None = ["acknowledge"]  # as ModelAdmin declares it

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description=_("Prendi visione degli allarmi selezionati"), permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset: AlertQuerySet) -> None:
        n = queryset.acknowledge(user=request.user)
        self.message_user(  # type: ignore[attr-defined]  # ModelAdmin's, the class this mixes into
            request, ngettext("%d allarme preso in visione.", "%d allarmi presi in visione.", n) % n, messages.SUCCESS
        )
