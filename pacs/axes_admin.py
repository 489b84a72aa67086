"""django-axes' admin of failed login attempts, with its one unnamed column named.

axes' "status" column has no description, so the admin titles it "Status" in
every language; the rest of its labels are translated in locale/it. Imported
by ``pacs.apps.AxesConfig.ready``, after the admin has registered axes' own.
"""

from __future__ import annotations

from typing import Any

from axes.admin import AccessAttemptAdmin as AxesAccessAttemptAdmin
from axes.models import AccessAttempt
from django.contrib import admin
from django.utils.translation import gettext_lazy as _


class AccessAttemptAdmin(AxesAccessAttemptAdmin):
    @admin.display(description=_("stato"))
    def status(self, obj: AccessAttempt) -> Any:
        return super().status(obj)


if admin.site.is_registered(AccessAttempt):
    admin.site.unregister(AccessAttempt)
    admin.site.register(AccessAttempt, AccessAttemptAdmin)
