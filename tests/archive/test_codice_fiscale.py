from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from archive.models import Patient
from kernel.codice_fiscale import codice_fiscale_error, is_valid_codice_fiscale, validate_codice_fiscale


@pytest.mark.parametrize(
    "code",
    [
        "RSSMRA85T10A562S",  # Mario Rossi, San Giuliano Terme
        "rssmra85t10a562s",  # case does not matter
        " RSSMRA85T10A562S ",
        "RSSMRA85T10A56NH",  # omocodia: last digits replaced by letters, check character recomputed
        "RSSMRAURTMLARSNL",  # every digit replaced
        "BNCLRA70A41L424M",  # a woman (day + 40), born in Trieste
    ],
)
def test_valid_codes(code: str) -> None:
    assert is_valid_codice_fiscale(code), codice_fiscale_error(code)


@pytest.mark.parametrize(
    "code,message",
    [
        ("RSSMRA85T10A562", "16 caratteri"),
        ("RSSMRA85T10A562SX", "16 caratteri"),
        ("RSSMRA85Z10A562S", "formato"),  # Z is no month
        ("12345678901234567"[:16], "formato"),
        ("RSSMRA85T10A562X", "controllo"),  # wrong check character
        ("RSSMRA85T10A56NX", "controllo"),  # omocodia with a wrong check character
        ("RSSMRA85T72A562C", "data di nascita"),  # 32 December
    ],
)
def test_invalid_codes_say_why(code: str, message: str) -> None:
    error = codice_fiscale_error(code)
    assert error is not None and message in error
    with pytest.raises(ValidationError):
        validate_codice_fiscale(code)


def test_patient_model_validates_its_codice_fiscale(db: None) -> None:
    patient = Patient(codice_fiscale="RSSMRA85T10A562X", family_name="Rossi")
    with pytest.raises(ValidationError) as info:
        patient.full_clean()
    assert "codice_fiscale" in info.value.message_dict


def test_a_patient_without_codice_fiscale_must_be_provisional(db: None) -> None:
    from django.db import IntegrityError

    with pytest.raises(ValidationError):
        Patient(family_name="Rossi").full_clean()
    with pytest.raises(IntegrityError):
        Patient.objects.create(family_name="Rossi", provisional=False)
