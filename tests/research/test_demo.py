"""The demo's researcher and data-protection officer, and its project."""

from __future__ import annotations

from io import StringIO

from django.contrib.auth import authenticate
from django.core.management import call_command

from archive import demo
from research.models import KEY_PERM, ExportProject


def test_the_demo_has_a_researcher_a_dpo_and_a_project(db: None) -> None:
    call_command("load_demo", stdout=StringIO())
    call_command("load_demo", stdout=StringIO())  # again: nothing doubled, passwords kept
    creds = demo.demo_credentials()
    researcher = authenticate(username="ricercatrice", password=creds["ricercatrice"])
    dpo = authenticate(username="dpo", password=creds["dpo"])
    assert researcher is not None and dpo is not None
    assert researcher.has_perms(["archive.view_study", "research.add_export", "research.add_exportproject"])
    assert not researcher.has_perm(KEY_PERM)
    assert dpo.has_perm(KEY_PERM) and not dpo.has_perm("research.add_export")
    assert list(ExportProject.objects.values_list("code", flat=True)) == ["DID-TORACE"]
