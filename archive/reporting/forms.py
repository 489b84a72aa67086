"""The radiologist's pages' forms: they read and shape input; the rules are archive.reporting.services'."""

from __future__ import annotations

import logging
from typing import Any, cast

from django import forms
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from archive.models import Facility, Report, Study

logger = logging.getLogger(__name__)


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        # The native date picker reads and writes ISO dates whatever the locale.
        super().__init__(attrs=attrs, format="%Y-%m-%d")


STATUS_TODO = "da_refertare"
STATUS_IN_PROGRESS = "in_refertazione"
STATUS_ALL = "tutti"


class WorklistFilterForm(forms.Form):
    """The work list's filters (a GET form: the address keeps them)."""

    facility = forms.ModelChoiceField(
        label=_("Presidio"), queryset=Facility.objects.none(), required=False, empty_label=_("Tutti")
    )
    modality = forms.ChoiceField(label=_("Modalità"), required=False)
    date_from = forms.DateField(label=_("Data dello studio, dal"), required=False, widget=DateInput())
    date_to = forms.DateField(label=_("al"), required=False, widget=DateInput())
    priority = forms.ChoiceField(
        label=_("Priorità"),
        required=False,
        choices=[("", _("Tutte")), *Study._meta.get_field("priority").choices],  # type: ignore[misc]  # get_field is typed for any field; this one has choices
    )
    status = forms.ChoiceField(
        label=_("Stato"),
        required=False,
        choices=[
            (STATUS_ALL, _("tutti i non firmati")),
            (STATUS_TODO, _("da refertare")),
            (STATUS_IN_PROGRESS, _("in refertazione")),
        ],
    )

    def __init__(self, *args: Any, facilities: QuerySet[Facility], modalities: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The bound copies of the fields declared above (self.fields maps names to Field).
        cast(forms.ModelChoiceField, self.fields["facility"]).queryset = facilities
        cast(forms.ChoiceField, self.fields["modality"]).choices = [("", _("Tutte")), *((m, m) for m in modalities)]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", _("La data finale precede quella iniziale."))
        return data


class PhraseForm(forms.Form):
    """A standard phrase: its title in the editor's list and its text."""

    title = forms.CharField(label=_("Titolo"), max_length=80, help_text=_("Come la frase appare nell'elenco."))
    text = forms.CharField(label=_("Testo"), widget=forms.Textarea(attrs={"rows": 4}))


class ReportForm(forms.Form):
    """A draft's four sections and the revision the radiologist is editing."""

    revision = forms.IntegerField(widget=forms.HiddenInput, min_value=1)
    clinical_question = forms.CharField(
        label=_("Quesito clinico"), required=False, widget=forms.Textarea(attrs={"rows": 3})
    )
    technique = forms.CharField(label=_("Tecnica"), required=False, widget=forms.Textarea(attrs={"rows": 3}))
    findings = forms.CharField(label=_("Descrizione"), required=False, widget=forms.Textarea(attrs={"rows": 10}))
    conclusion = forms.CharField(label=_("Conclusioni"), required=False, widget=forms.Textarea(attrs={"rows": 4}))
    # D.Lgs 101/2020, art. 161, c. 5: shown (and required to sign) for procedures with ionising radiation.
    exposure = forms.CharField(
        label=_("Testo da riportare nel referto"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 7}),
        help_text=_("Proposte dai dati di dose della modalità: controllale o scrivile, poi conferma."),
    )
    exposure_confirmed = forms.BooleanField(
        label=_("Confermo le informazioni sull'esposizione del paziente"), required=False
    )

    # A textarea's newlines arrive as CRLF; the report keeps what was written, trimmed only at the ends.
    def _text(self, name: str) -> str:
        return str(self.cleaned_data.get(name) or "").replace("\r\n", "\n")

    def sections(self) -> dict[str, str]:
        return {name: self._text(name) for name in ("clinical_question", "technique", "findings", "conclusion")}

    @classmethod
    def for_report(cls, report: Report) -> ReportForm:
        return cls(
            initial={
                "revision": report.revision,
                "clinical_question": report.clinical_question,
                "technique": report.technique,
                "findings": report.findings,
                "conclusion": report.conclusion,
                "exposure": report.exposure,
                "exposure_confirmed": bool((report.exposure_data or {}).get("confirmed")),
            }
        )


class SignForm(forms.Form):
    """Signing asks for the password again, and the one-time code where the user has a second factor."""

    revision = forms.IntegerField(widget=forms.HiddenInput, min_value=1)
    password = forms.CharField(
        label=_("Password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password", "autofocus": True}),
    )
    otp = forms.CharField(
        label=_("Codice di verifica (app di autenticazione)"),
        required=False,
        max_length=10,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "pattern": "[0-9]*", "spellcheck": "false"}
        ),
    )

    def __init__(self, *args: Any, needs_otp: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if needs_otp:
            self.fields["otp"].required = True
        else:
            del self.fields["otp"]


class AmendForm(forms.Form):
    kind = forms.ChoiceField(
        choices=[(Report.Kind.CORRECTION, _("rettifica")), (Report.Kind.ADDENDUM, _("integrazione"))]
    )
