"""The CUP's staff pages, under /cup/."""

from __future__ import annotations

from .reconciliation_views import urlpatterns as _reconciliation_pages
from .views import urlpatterns as _cup_pages

app_name = "booking"
urlpatterns = [*_cup_pages, *_reconciliation_pages]
