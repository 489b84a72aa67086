"""CUP operator pages: placeholder until the pages land."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("CUP")


urlpatterns = [path("", home, name="home")]
