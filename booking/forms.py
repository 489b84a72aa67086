"""The CUP pages' forms: they only read and shape input; the rules are the services'."""

from __future__ import annotations

import datetime as dt
import logging
from itertools import groupby
from pathlib import Path
from typing import Any, cast

from django import forms
from django import forms as django_forms
from django.conf import settings
from django.forms.renderers import DjangoTemplates
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

from archive.models import Facility, HealthAuthority
from kernel.codice_fiscale import codice_fiscale_error, codice_fiscale_facts, normalize_codice_fiscale

from .models import Booking, DistributionChoice, Procedure, Station
from .services import FIRST_AVAILABLE_DEFAULT_DAYS, FIRST_AVAILABLE_MAX_DAYS, delivery_consent_error

logger = logging.getLogger(__name__)


class CupFormRenderer(DjangoTemplates):
    """The CUP pages' fields in Bootstrap Italia's markup (``booking/forms/field.html``).

    Django's own renderer, which finds the widgets' templates without
    ``django.forms`` among the apps, also looking in the project's templates.
    """

    field_template_name = "booking/forms/field.html"

    @cached_property
    def engine(self) -> Any:
        return self.backend(
            {
                "APP_DIRS": True,
                "DIRS": [
                    Path(django_forms.__file__).parent / "templates",
                    settings.BASE_DIR / "templates",
                ],
                "NAME": "cupforms",
                "OPTIONS": {},
            }
        )


# The classes Bootstrap Italia styles each kind of control by; checkboxes,
# radios and selects are styled by their wrapper (field.html).
_CONTROL_CLASSES = {
    forms.TextInput: "form-control",
    forms.NumberInput: "form-control",
    forms.EmailInput: "form-control",
    forms.DateInput: "form-control",
    forms.Textarea: "form-control",
}


class CupForm(forms.Form):
    default_renderer = CupFormRenderer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            css = next((c for kind, c in _CONTROL_CLASSES.items() if isinstance(field.widget, kind)), None)
            if css and css not in field.widget.attrs.get("class", ""):
                field.widget.attrs["class"] = f"{field.widget.attrs.get('class', '')} {css}".strip()

    def full_clean(self) -> None:
        super().full_clean()
        # The page comes back with errors: the first field at fault has the focus.
        first = next((name for name in self.fields if name in self.errors and not self[name].is_hidden), None)
        if first is not None:
            for field in self.fields.values():
                field.widget.attrs.pop("autofocus", None)
            self.fields[first].widget.attrs["autofocus"] = True


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        # The native date picker reads and writes ISO dates whatever the locale.
        super().__init__(attrs=attrs, format="%Y-%m-%d")


def tomorrow() -> dt.date:
    return timezone.localdate() + dt.timedelta(days=1)


class PatientSearchForm(CupForm):
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


class PatientCreateForm(CupForm):
    """A new patient: birth date, sex and place of birth come from the codice
    fiscale when left empty, and must agree with it when typed."""

    codice_fiscale = forms.CharField(
        label=_("Codice fiscale"),
        max_length=32,
        widget=forms.TextInput(
            attrs={"autofocus": True, "autocomplete": "off", "spellcheck": "false", "autocapitalize": "characters"}
        ),
        help_text=_("Data di nascita, sesso e luogo di nascita si ricavano dal codice fiscale."),
    )
    family_name = forms.CharField(label=_("Cognome"), max_length=128)
    given_name = forms.CharField(label=_("Nome"), max_length=128)
    birth_date = forms.DateField(label=_("Data di nascita"), widget=DateInput(), required=False)
    sex = forms.ChoiceField(
        label=_("Sesso"), choices=[("", "—"), ("F", _("F (femmina)")), ("M", _("M (maschio)"))], required=False
    )
    birth_place = forms.CharField(
        label=_("Luogo di nascita"),
        max_length=128,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
        help_text=_("Il comune, o lo Stato estero."),
    )

    def clean_codice_fiscale(self) -> str:
        # The same check patient_create makes, early, so that a mistyped code is
        # reported together with the other missing fields.
        code = normalize_codice_fiscale(self.cleaned_data["codice_fiscale"])
        error = codice_fiscale_error(code)
        if error:
            raise forms.ValidationError(error, code="invalid_codice_fiscale")
        return code

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        code = data.get("codice_fiscale")
        if not code:
            # No valid code to read them from: the operator types them.
            for name in ("birth_date", "sex"):
                if name not in self.errors and not data.get(name):
                    self.add_error(
                        name,
                        forms.ValidationError(
                            _("Campo obbligatorio: scrivilo, oppure correggi il codice fiscale da cui si ricava."),
                            code="required",
                        ),
                    )
            return data
        facts = codice_fiscale_facts(code)
        filled: dict[str, str] = {}
        birth_date = data.get("birth_date")
        if "birth_date" in self.errors:
            pass  # a date that is not a date: its own message says so
        elif birth_date is None:
            data["birth_date"] = facts.birth_date
            filled["birth_date"] = facts.birth_date.isoformat()
        elif birth_date != facts.birth_date:
            self.add_error(
                "birth_date",
                forms.ValidationError(
                    _(
                        "Il codice fiscale %(code)s indica la data di nascita %(cf)s, non %(typed)s: "
                        "correggi la data o il codice fiscale."
                    )
                    % {
                        "code": code,
                        "cf": facts.birth_date.strftime("%d/%m/%Y"),
                        "typed": birth_date.strftime("%d/%m/%Y"),
                    },
                    code="codice_fiscale_mismatch",
                ),
            )
        sex = data.get("sex")
        if not sex:
            data["sex"] = filled["sex"] = facts.sex
        elif sex != facts.sex:
            self.add_error(
                "sex",
                forms.ValidationError(
                    _(
                        "Il codice fiscale %(code)s è di una persona di sesso %(cf)s, non %(typed)s: "
                        "correggi il sesso o il codice fiscale."
                    )
                    % {"code": code, "cf": facts.sex, "typed": sex},
                    code="codice_fiscale_mismatch",
                ),
            )
        place = (data.get("birth_place") or "").strip()
        if not place:
            data["birth_place"] = filled["birth_place"] = facts.place_label
        elif not facts.place_matches(place):
            self.add_error(
                "birth_place",
                forms.ValidationError(
                    _(
                        "Il codice fiscale %(code)s indica come luogo di nascita %(cf)s, non %(typed)s: "
                        "correggi il luogo o il codice fiscale."
                    )
                    % {"code": code, "cf": facts.place_label, "typed": place},
                    code="codice_fiscale_mismatch",
                ),
            )
        else:
            data["birth_place"] = facts.place_label
        if filled and self.errors:
            # The page comes back with errors elsewhere: show what the code gave.
            shown = self.data.copy()  # type: ignore[attr-defined]  # a QueryDict or a dict, both copy
            for name, value in filled.items():
                shown[name] = value
            self.data = shown
        return data


class ProcedureField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Procedure) -> str:
        return f"{obj.description} ({obj.code})"


class FacilityField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Facility) -> str:
        return f"{obj.name} ({obj.code})"


def _procedure_choices(field: ProcedureField, *, autofocus: bool) -> None:
    procedures = list(Procedure.objects.filter(active=True).order_by("modality", "description"))
    # Grouped by modality: a native <select> with <optgroup>s, searchable by typing.
    field.choices = [
        ("", _("— scegli la prestazione —")),
        *(
            (modality, [(p.pk, field.label_from_instance(p)) for p in group])
            for modality, group in groupby(procedures, key=lambda p: p.modality)
        ),
    ]
    if autofocus:
        field.widget.attrs["autofocus"] = True


class SlotSearchForm(CupForm):
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
        _procedure_choices(cast(ProcedureField, self.fields["procedure"]), autofocus=autofocus)

    def clean_day(self) -> dt.date:
        day: dt.date = self.cleaned_data["day"]
        if day < timezone.localdate():
            raise forms.ValidationError(
                _("Il giorno %(day)s è già passato: scegli oggi o un giorno futuro.")
                % {"day": day.strftime("%d/%m/%Y")},
                code="past",
            )
        return day


class FirstAvailableForm(CupForm):
    """The first free slots for a procedure across the facilities of a health
    authority, or of the whole region ("prima disponibilità")."""

    procedure = ProcedureField(
        label=_("Prestazione"), queryset=Procedure.objects.filter(active=True), widget=forms.Select()
    )
    authority = forms.ModelChoiceField(
        label=_("Dove cercare"),
        queryset=HealthAuthority.objects.none(),
        required=False,
        empty_label=_("In tutta la regione"),
        help_text=_("I presidi di un'azienda sanitaria, oppure tutti quelli della regione."),
    )
    start = forms.DateField(label=_("A partire dal giorno"), widget=DateInput(), initial=timezone.localdate)
    days = forms.IntegerField(
        label=_("Entro quanti giorni"),
        initial=FIRST_AVAILABLE_DEFAULT_DAYS,
        min_value=1,
        max_value=FIRST_AVAILABLE_MAX_DAYS,
        widget=forms.NumberInput(attrs={"inputmode": "numeric"}),
    )

    # How far ahead the search may start: the agendas are not open beyond it.
    MAX_START_AHEAD_DAYS = 365

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["authority"]).queryset = (
            HealthAuthority.objects.filter(facilities__stations__active=True).distinct().order_by("name")
        )
        _procedure_choices(cast(ProcedureField, self.fields["procedure"]), autofocus=True)
        # Written here, not on the field: the numbers go into the message of the request's language.
        days = self.fields["days"]
        limits = {"max": FIRST_AVAILABLE_MAX_DAYS}
        days.help_text = _("Da 1 a %(max)d giorni.") % limits
        days.error_messages.update(
            {
                "invalid": _("Scrivi un numero di giorni, da 1 a %(max)d.") % limits,
                "min_value": _("Cerca in almeno 1 giorno."),
                "max_value": _("Si cerca al massimo in %(max)d giorni.") % limits,
            }
        )

    def clean_start(self) -> dt.date:
        start: dt.date = self.cleaned_data["start"]
        today = timezone.localdate()
        if start < today:
            raise forms.ValidationError(
                _("Il giorno %(day)s è già passato: parti da oggi o da un giorno futuro.")
                % {"day": start.strftime("%d/%m/%Y")},
                code="past",
            )
        if start > today + dt.timedelta(days=self.MAX_START_AHEAD_DAYS):
            raise forms.ValidationError(
                _("Parti al più tardi da un giorno entro un anno da oggi."),
                code="too_far",
            )
        return start


def _delivery_consent_clean(form: forms.Form) -> None:
    """The consent ticked with a delivery that is not online: reported with the other fields."""
    data = form.cleaned_data
    error = delivery_consent_error(delivery=data.get("delivery") or "", consent_given=bool(data.get("consent_given")))
    if error:
        form.add_error("consent_given", forms.ValidationError(error, code="consent_without_online"))


class BookingForm(CupForm):
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
    consent_given = forms.BooleanField(label=_("Consenso alla consegna online"), required=False)
    # The version of the information text the patient was shown, so that the
    # one recorded is the one read even if a new one came into force meanwhile.
    consent_version = forms.CharField(
        label=_("Versione dell'informativa"), required=False, max_length=32, widget=forms.HiddenInput
    )

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

    def clean(self) -> dict[str, Any]:
        super().clean()
        _delivery_consent_clean(self)
        return self.cleaned_data


class ChoiceForm(CupForm):
    """A new version of the distribution choice."""

    delivery = forms.ChoiceField(
        label=_("Consegna di referto e immagini"),
        choices=DistributionChoice.Delivery.choices,
        widget=forms.RadioSelect,
    )
    consent_given = forms.BooleanField(label=_("Consenso alla consegna online"), required=False)
    consent_version = forms.CharField(
        label=_("Versione dell'informativa"), required=False, max_length=32, widget=forms.HiddenInput
    )
    channel = forms.ChoiceField(
        label=_("Canale"), choices=Booking.Channel.choices, initial=Booking.Channel.AUTHORITY_CUP
    )
    note = forms.CharField(label=_("Nota"), required=False, max_length=500)

    def clean(self) -> dict[str, Any]:
        super().clean()
        _delivery_consent_clean(self)
        return self.cleaned_data


class CancelForm(CupForm):
    reason = forms.CharField(
        label=_("Motivo dell'annullamento"),
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60, "autofocus": True}),
    )


class DayForm(CupForm):
    """The home page's list of the day's bookings at a facility."""

    facility = FacilityField(label=_("Presidio"), queryset=Facility.objects.none(), empty_label=None)
    day = forms.DateField(label=_("Giorno"), widget=DateInput(), required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(FacilityField, self.fields["facility"]).queryset = Facility.objects.order_by("name")
