"""The site's front door: each member of staff lands on their own work."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

# (permission, page): the first the user has wins.
_LANDINGS = [
    ("archive.sign_report", "reporting:worklist"),
    ("booking.add_booking", "booking:home"),
    ("booking.reconcile_study", "booking:reconciliation_list"),
    ("archive.view_report", "reporting:worklist"),
    ("booking.view_booking", "booking:home"),
]


def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not user.is_authenticated:
        return redirect("login")
    if hasattr(user, "citizen"):
        return redirect("portal:exams")
    for perm, page in _LANDINGS:
        if user.has_perm(perm):
            return redirect(page)
    return redirect("admin:index")
