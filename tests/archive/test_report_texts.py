"""Report templates in the admin, kept by a department's head for their own
health authority; a radiologist's own standard phrases on their page."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from archive.models import HealthAuthority, ReportPhrase, ReportTemplate, StaffProfile
from tests.reporting_helpers import Reporting
from tests.reporting_helpers import reporting as reporting  # noqa: F401  (the shared fixture)

TEMPLATE_PERMS = ("view", "add", "change", "delete")


def head_of(authority: HealthAuthority | None, username: str) -> Client:
    """A department's head: staff with the template permissions, of ``authority`` (None: regional)."""
    user = get_user_model().objects.create_user(username=username, password="x-head-password-1", is_staff=True)
    for action in TEMPLATE_PERMS:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="archive", codename=f"{action}_reporttemplate")
        )
    StaffProfile.objects.create(user=user, authority=authority)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def templates(reporting: Reporting) -> tuple[ReportTemplate, ReportTemplate]:  # noqa: F811
    ours = ReportTemplate.objects.create(
        authority=reporting.region.authority, procedure_code="87.41", name="TC torace Trieste", findings="Norma."
    )
    theirs = ReportTemplate.objects.create(
        authority=reporting.other_authority, procedure_code="87.41", name="TC torace Udine", findings="Norma."
    )
    return ours, theirs


def form_data(authority: HealthAuthority, **fields: str) -> dict[str, object]:
    return {"authority": authority.pk, "procedure_code": "87.41", "name": "Nuovo", "findings": "Testo."} | fields


def test_a_head_sees_and_edits_only_the_templates_of_their_authority(
    reporting: Reporting,  # noqa: F811
    templates: tuple[ReportTemplate, ReportTemplate],
) -> None:
    ours, theirs = templates
    client = head_of(reporting.region.authority, "primario")
    listing = client.get(reverse("admin:archive_reporttemplate_changelist")).content.decode()
    assert "TC torace Trieste" in listing and "TC torace Udine" not in listing

    # Another authority's template does not exist for them.
    response = client.get(reverse("admin:archive_reporttemplate_change", args=[theirs.pk]))
    assert response.status_code == 302  # the admin's "does not exist" redirect
    response = client.post(
        reverse("admin:archive_reporttemplate_change", args=[theirs.pk]),
        form_data(reporting.other_authority, name="Cambiato"),
    )
    assert ReportTemplate.objects.get(pk=theirs.pk).name == "TC torace Udine"

    # The add form offers only their authority; a forged choice is refused and nothing is added.
    page = client.get(reverse("admin:archive_reporttemplate_add")).content.decode()
    assert reporting.region.authority.name in page and reporting.other_authority.name not in page
    response = client.post(reverse("admin:archive_reporttemplate_add"), form_data(reporting.other_authority))
    assert response.status_code == 200 and not ReportTemplate.objects.filter(name="Nuovo").exists()

    response = client.post(reverse("admin:archive_reporttemplate_add"), form_data(reporting.region.authority))
    assert response.status_code == 302
    assert ReportTemplate.objects.get(name="Nuovo").authority == reporting.region.authority

    response = client.post(
        reverse("admin:archive_reporttemplate_change", args=[ours.pk]),
        form_data(reporting.region.authority, name="TC torace Trieste", technique="Nuova tecnica."),
    )
    assert response.status_code == 302
    assert ReportTemplate.objects.get(pk=ours.pk).technique == "Nuova tecnica."


def test_a_template_needs_some_text(reporting: Reporting) -> None:  # noqa: F811
    client = head_of(reporting.region.authority, "primario")
    response = client.post(
        reverse("admin:archive_reporttemplate_add"), form_data(reporting.region.authority, findings="")
    )
    assert response.status_code == 200 and "Scrivi il testo di almeno una sezione." in response.content.decode()
    assert not ReportTemplate.objects.exists()


def test_regional_staff_see_every_authority(
    reporting: Reporting,  # noqa: F811
    templates: tuple[ReportTemplate, ReportTemplate],
) -> None:
    listing = head_of(None, "regionale").get(reverse("admin:archive_reporttemplate_changelist")).content.decode()
    assert "TC torace Trieste" in listing and "TC torace Udine" in listing


def test_a_radiologist_without_the_permission_cannot_edit_templates(
    reporting: Reporting,  # noqa: F811
    templates: tuple[ReportTemplate, ReportTemplate],
) -> None:
    client = Client()
    client.force_login(reporting.radiologist)  # type: ignore[arg-type]
    assert client.get(reverse("admin:archive_reporttemplate_changelist")).status_code == 403
    ours, _theirs = templates
    response = client.post(
        reverse("admin:archive_reporttemplate_change", args=[ours.pk]),
        form_data(reporting.region.authority, name="Cambiato"),
    )
    assert response.status_code == 403 and ReportTemplate.objects.get(pk=ours.pk).name == "TC torace Trieste"


def test_a_radiologist_keeps_their_own_phrases(reporting: Reporting) -> None:  # noqa: F811
    client = Client()
    client.force_login(reporting.radiologist)  # type: ignore[arg-type]
    response = client.post("/refertazione/frasi/", {"title": "Non versamento", "text": "Non versamento pleurico."})
    assert response.status_code == 302
    phrase = ReportPhrase.objects.get(owner=reporting.radiologist)
    assert (phrase.title, phrase.text) == ("Non versamento", "Non versamento pleurico.")

    # The same title twice is refused with a message.
    response = client.post("/refertazione/frasi/", {"title": "Non versamento", "text": "Altro."})
    assert response.status_code == 400 and "Hai già una frase" in response.content.decode()

    response = client.post(
        "/refertazione/frasi/",
        {"frase": phrase.pk, "title": "Non versamento", "text": "Non versamento pleurico né pericardico."},
    )
    assert response.status_code == 302
    assert ReportPhrase.objects.get(pk=phrase.pk).text == "Non versamento pleurico né pericardico."
    assert "Non versamento pleurico né pericardico." in client.get("/refertazione/frasi/").content.decode()

    # A colleague neither sees, changes nor deletes it.
    colleague = Client()
    colleague.force_login(reporting.colleague)  # type: ignore[arg-type]
    assert "Non versamento" not in colleague.get("/refertazione/frasi/").content.decode()
    assert colleague.get(f"/refertazione/frasi/?frase={phrase.pk}").status_code == 404
    assert colleague.post("/refertazione/frasi/", {"frase": phrase.pk, "title": "X", "text": "Y"}).status_code == 404
    assert colleague.post(f"/refertazione/frasi/{phrase.pk}/elimina/").status_code == 404
    assert ReportPhrase.objects.filter(pk=phrase.pk, title="Non versamento").exists()

    assert client.post(f"/refertazione/frasi/{phrase.pk}/elimina/").status_code == 302
    assert not ReportPhrase.objects.exists()
