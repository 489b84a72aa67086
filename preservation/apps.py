from __future__ import annotations

from django.apps import AppConfig


class PreservationConfig(AppConfig):
    name = "preservation"
