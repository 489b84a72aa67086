"""Load the demo region: authorities, facilities, DICOM peers, staff accounts, studies.

Each installed app may add its own demo data with a ``demo_load()`` function
in its ``demo`` module (booking, portal, preservation as they are built); they
are called in INSTALLED_APPS order after the archive's, so that the archive
does not import the apps above it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand

from archive import demo


class Command(BaseCommand):
    help = "Load (or refresh) the demo region of Friuli Venezia Giulia. Safe to run again."

    def handle(self, *args: Any, **opts: Any) -> None:
        demo.demo_region_load()
        creds = demo.demo_accounts_load()
        stored, existing = demo.demo_studies_load()
        for config in apps.get_app_configs():
            if config.name == "archive":
                continue
            name = f"{config.name}.demo"
            if importlib.util.find_spec(name) is None:
                continue
            module = importlib.import_module(name)
            if hasattr(module, "demo_load"):
                module.demo_load()
        self.stdout.write(
            f"demo region loaded: {len(demo.FACILITIES)} facilities, {len(creds)} accounts, "
            f"{stored} instances stored, {existing} already there"
        )
