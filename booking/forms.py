"""The CUP pages' forms: they only read and shape input; the rules are the services'."""

from __future__ import annotations

import datetime as dt
import logging
from itertools import groupby
from typing import Any, cast

from django import forms
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_lazy as _

from archive.models import Facility
from kernel.codice_fiscale import codice_fiscale_error, normalize_codice_fiscale

from .models import Booking, DistributionChoice, Procedure, Station

logger = logging.getLogger(__name__)


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        # The native date picker reads and writes ISO dates whatever the locale.
        super().__init__(attrs=attrs, format="%Y-%m-%d")


def tomorrow() -> dt.date:
    return timezone.localdate() + dt.timedelta(days=1)


class PatientSearchForm(forms.Form):
    codice_fiscale = forms.CharField(
        label=_("Codice fiscale"),
        required=False,
        max_length=32,
        widget=forms.TextInput(
            attrs={"autofocus": True, "autocomplete": "off", "spellcheck": "false", "autocapitalize": "characters"}
        ),
    )
    family_name = forms.CharField(
        label=_("Cognome"), required=False, max_length=128, widget=forms.TextInput(attrs={"autocomplete": "off"})
    )
    birth_date = forms.DateField(label=_("Data di nascita"), required=False, widget=DateInput())

    def clean_codice_fiscale(self) -> str:
        code = normalize_codice_fiscale(self.cleaned_data.get("codice_fiscale", ""))
        if code:
            error = codice_fiscale_error(code)
            if error:
                raise forms.ValidationError(error, code="invalid_codice_fiscale")
        return code

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.errors:
            return data
        if not data.get("codice_fiscale") and not (data.get("family_name", "").strip() and data.get("birth_date")):
            raise forms.ValidationError(
                _("Scrivi il codice fiscale, oppure il cognome e la data di nascita."), code="empty"
            )
        return data


class PatientCreateForm(forms.Form):
    codice_fiscale = forms.CharField(
        label=_("Codice fiscale"),
        max_length=32,
        widget=forms.TextInput(
            attrs={"autofocus": True, "autocomplete": "off", "spellcheck": "false", "autocapitalize": "characters"}
        ),
    )
    family_name = forms.CharField(label=_("Cognome"), max_length=128)
    given_name = forms.CharField(label=_("Nome"), max_length=128)
    birth_date = forms.DateField(label=_("Data di nascita"), widget=DateInput())
    sex = forms.ChoiceField(label=_("Sesso"), choices=[("", "—"), ("F", _("F (femmina)")), ("M", _("M (maschio)"))])

    def clean_codice_fiscale(self) -> str:
        # The same check patient_create makes, early, so that a mistyped code is
        # reported together with the other missing fields.
        code = normalize_codice_fiscale(self.cleaned_data["codice_fiscale"])
        error = codice_fiscale_error(code)
        if error:
            raise forms.ValidationError(error, code="invalid_codice_fiscale")
        return code


class ProcedureField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Procedure) -> str:
        return f"{obj.description} ({obj.code})"


class FacilityField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Facility) -> str:
        return f"{obj.name} ({obj.code})"


class SlotSearchForm(forms.Form):
    """Step 1 of a booking: what, where, which day."""

    procedure = ProcedureField(
        label=_("Prestazione"), queryset=Procedure.objects.filter(active=True), widget=forms.Select()
    )
    facility = FacilityField(label=_("Presidio"), queryset=Facility.objects.none(), empty_label=None)
    day = forms.DateField(label=_("Giorno"), widget=DateInput(), initial=tomorrow)

    def __init__(self, *args: Any, autofocus: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The bound copies of the fields declared above (self.fields maps names to Field).
        cast(FacilityField, self.fields["facility"]).queryset = (
            Facility.objects.filter(stations__active=True).distinct().order_by("name")
        )
        procedures = list(Procedure.objects.filter(active=True).order_by("modality", "description"))
        # Grouped by modality: a native <select> with <optgroup>s, searchable by typing.
        field = cast(ProcedureField, self.fields["procedure"])
        field.choices = [
            ("", _("— scegli la prestazione —")),
            *(
                (modality, [(p.pk, field.label_from_instance(p)) for p in group])
                for modality, group in groupby(procedures, key=lambda p: p.modality)
            ),
        ]
        if autofocus:
            field.widget.attrs["autofocus"] = True

    def clean_day(self) -> dt.date:
        day: dt.date = self.cleaned_data["day"]
        if day < timezone.localdate():
            raise forms.ValidationError(
                _("Il giorno %(day)s è già passato: scegli oggi o un giorno futuro.")
                % {"day": day.strftime("%d/%m/%Y")},
                code="past",
            )
        return day


class BookingForm(forms.Form):
    """Step 2 of a booking: the slot, the prescription and contacts, the distribution choice."""

    slot = forms.CharField(
        label=_("Orario"),
        error_messages={"required": _("Scegli un orario libero.")},
    )
    nre = forms.CharField(
        label=_("NRE (numero di ricetta elettronica)"),
        required=False,
        max_length=20,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text=_("15 caratteri, dalla ricetta dematerializzata."),
    )
    contact_phone = forms.CharField(
        label=_("Telefono"), required=False, max_length=32, widget=forms.TextInput(attrs={"type": "tel"})
    )
    contact_email = forms.CharField(
        label=_("E-mail"), required=False, max_length=254, widget=forms.TextInput(attrs={"type": "email"})
    )
    clinical_question = forms.CharField(
        label=_("Quesito diagnostico"), required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 60})
    )
    priority = forms.ChoiceField(
        label=_("Priorità della ricetta"),
        choices=Booking.Priority.choices,
        required=False,
        initial=Booking.Priority.PLANNED,
        help_text=_("La classe di priorità scritta sulla ricetta."),
    )
    referring_physician = forms.CharField(label=_("Medico prescrittore"), required=False, max_length=128)
    channel = forms.ChoiceField(
        label=_("Canale"), choices=Booking.Channel.choices, initial=Booking.Channel.AUTHORITY_CUP
    )
    delivery = forms.ChoiceField(
        label=_("Consegna di referto e immagini"),
        choices=DistributionChoice.Delivery.choices,
        widget=forms.RadioSelect,
        error_messages={"required": _("Scegli come consegnare referto e immagini: CD oppure online.")},
    )
    consent_given = forms.BooleanField(required=False)
    # The version of the information text the patient was shown, so that the
    # one recorded is the one read even if a new one came into force meanwhile.
    consent_version = forms.CharField(required=False, max_length=32, widget=forms.HiddenInput)

    def __init__(self, *args: Any, stations: list[Station], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stations = {s.pk: s for s in stations}

    def clean_slot(self) -> tuple[Station, dt.datetime]:
        """``<station id>|<ISO datetime>``; whether it is still free is the service's to say."""
        station_id, _sep, when = self.cleaned_data["slot"].partition("|")
        station = self.stations.get(int(station_id)) if station_id.isdigit() else None
        scheduled_at = parse_datetime(when)
        if station is None or scheduled_at is None:
            raise forms.ValidationError(_("Scegli un orario libero dall'elenco."), code="invalid")
        return station, scheduled_at

    def clean_priority(self) -> str:
        # Absent (an older page, a script): the prescription's default class.
        return self.cleaned_data.get("priority") or Booking.Priority.PLANNED


class ChoiceForm(forms.Form):
    """A new version of the distribution choice."""

    delivery = forms.ChoiceField(
        label=_("Consegna di referto e immagini"),
        choices=DistributionChoice.Delivery.choices,
        widget=forms.RadioSelect,
    )
    consent_given = forms.BooleanField(required=False)
    consent_version = forms.CharField(required=False, max_length=32, widget=forms.HiddenInput)
    channel = forms.ChoiceField(
        label=_("Canale"), choices=Booking.Channel.choices, initial=Booking.Channel.AUTHORITY_CUP
    )
    note = forms.CharField(label=_("Nota"), required=False, max_length=500)


class CancelForm(forms.Form):
    reason = forms.CharField(
        label=_("Motivo dell'annullamento"),
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60, "autofocus": True}),
    )


class DayForm(forms.Form):
    """The home page's list of the day's bookings at a facility."""

    facility = FacilityField(label=_("Presidio"), queryset=Facility.objects.none(), empty_label=None)
    day = forms.DateField(label=_("Giorno"), widget=DateInput(), required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(FacilityField, self.fields["facility"]).queryset = Facility.objects.order_by("name")
