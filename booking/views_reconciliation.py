"""Reconciliation pages: placeholder until matching lands."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def reconciliation_list(request: HttpRequest) -> HttpResponse:
    return HttpResponse("riconciliazione")


urlpatterns = [path("riconciliazione/", reconciliation_list, name="reconciliation_list")]
