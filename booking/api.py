"""REST API for external CUP systems: placeholder until the API lands."""

from __future__ import annotations

urlpatterns: list = []
