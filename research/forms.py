"""The research pages' forms: a new project, and the studies of one export."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from .models import ExportProject

_REGION = re.compile(r"^\s*([A-Za-z]{2})\s+(\d+)\s*[xX]\s*(\d+)\s*:\s*(.+)$")


def regions_parse(text: str) -> list[dict[str, Any]]:
    """``US 800x600: 0,0,800,60; 600,540,200,60`` (one line per kind of image) as the project stores it.

    Raises
    ------
    forms.ValidationError
        A line that does not read so, or a box outside the image.
    """
    regions = []
    for number, line in enumerate((t for t in text.splitlines() if t.strip()), start=1):
        match = _REGION.match(line)
        if not match:
            raise forms.ValidationError(_("Riga %(n)s: scriva ad esempio «US 800x600: 0,0,800,60».") % {"n": number})
        modality, columns, rows, boxes_text = match.groups()
        boxes = []
        for box_text in boxes_text.split(";"):
            parts = [p.strip() for p in box_text.split(",")]
            if len(parts) != 4 or not all(p.isdigit() for p in parts):
                raise forms.ValidationError(
                    _("Riga %(n)s: ogni riquadro è x,y,larghezza,altezza in pixel.") % {"n": number}
                )
            x, y, width, height = (int(p) for p in parts)
            if width == 0 or height == 0 or x + width > int(columns) or y + height > int(rows):
                raise forms.ValidationError(_("Riga %(n)s: un riquadro esce dall'immagine.") % {"n": number})
            boxes.append([x, y, width, height])
        regions.append({"modality": modality.upper(), "columns": int(columns), "rows": int(rows), "boxes": boxes})
    return regions


class ProjectForm(forms.ModelForm):
    regions = forms.CharField(
        label=_("Zone da oscurare (testo impresso)"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_(
            "Facoltativo. Una riga per tipo di immagine: modalità, colonne x righe, poi i riquadri "
            "x,y,larghezza,altezza separati da punto e virgola. Es.: US 800x600: 0,0,800,60. "
            "Le immagini con testo impresso che corrispondono escono con quei riquadri anneriti; le altre sono escluse."
        ),
    )

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

    def clean_regions(self) -> list[dict[str, Any]]:
        return regions_parse(str(self.cleaned_data.get("regions") or ""))

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
