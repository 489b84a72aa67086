"""The operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from django.urls import path

from . import health, metrics

urlpatterns = [
    path("health/live/", health.live, name="health-live"),
    path("health/ready/", health.ReadinessView.as_view(), name="health-ready"),
    path("metrics", metrics.metrics, name="metrics"),
]
