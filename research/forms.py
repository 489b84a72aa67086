"""The research pages' forms: a new project, and the studies of one export."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from .models import ExportProject


class ProjectForm(forms.ModelForm):
    class Meta:
        model = ExportProject
        fields = [
            "code",
            "title",
            "purpose",
            "retain_dates_modified",
            "retain_device_identity",
            "retain_patient_characteristics",
            "clean_descriptors",
        ]
        widgets = {"purpose": forms.Textarea(attrs={"rows": 3})}

    def clean_code(self) -> str:
        code = str(self.cleaned_data["code"]).upper()
        if ExportProject.objects.filter(code=code).exists():
            raise forms.ValidationError(_("Esiste già un progetto con questo codice."))
        return code


class ExportForm(forms.Form):
    """One study by its UID, or a query: patient, date range, modality, facility."""

    study_uid = forms.CharField(label=_("UID dello studio"), max_length=64, required=False)
    patient = forms.CharField(label=_("Paziente (codice fiscale o PatientID)"), max_length=64, required=False)
    date_from = forms.DateField(label=_("Dal giorno"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label=_("Al giorno"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    modality = forms.CharField(label=_("Modalità (es. CT)"), max_length=16, required=False)
    facility = forms.CharField(label=_("Presidio (codice)"), max_length=16, required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not any(data.get(k) for k in self.fields):
            raise forms.ValidationError(_("Indichi uno studio o almeno un criterio di ricerca."))
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError(_("La data iniziale viene dopo quella finale."))
        return data

    def criteria(self) -> dict[str, str]:
        return {k: (v.isoformat() if hasattr(v, "isoformat") else str(v)) for k, v in self.cleaned_data.items() if v}
