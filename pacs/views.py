"""The site's front door: a citizen lands on their exams, each member of staff
on their own work, and a visitor not logged in chooses a door (the citizen's
FSE login or the staff login)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

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
        return render(request, "home.html")
    if hasattr(user, "citizen"):
        return redirect("portal:exams")
    for perm, page in _LANDINGS:
        if user.has_perm(perm):
            return redirect(page)
    return redirect("admin:index")
