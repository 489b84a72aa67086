"""The radiologist's pages: placeholder until they land."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def worklist(request: HttpRequest) -> HttpResponse:
    return HttpResponse("refertazione")


app_name = "reporting"
urlpatterns = [path("", worklist, name="worklist")]
