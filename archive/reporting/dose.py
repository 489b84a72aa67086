"""The patient's exposure for the report (D.Lgs 101/2020, art. 161, c. 5).

The report of every procedure with ionising radiation says the exposure. The
figures are proposed to the radiologist, who reviews the text and confirms it
before signing (:func:`archive.reporting.services.report_sign` refuses
otherwise). They come, best first, from:

- the modality's Radiation Dose SR (X-Ray RDSR, Enhanced X-Ray RDSR,
  Radiopharmaceutical RDSR), read with highdicom's SR content items: CT
  (TID 10011) CTDIvol and DLP per irradiation event and the accumulated DLP;
  projection X-ray (TID 10001/10002) the dose-area product and the dose at the
  reference point (or the entrance exposure); NM (TID 10021) the administered
  activity and the radiopharmaceutical;
- or, with no RDSR, the images' own dose attributes: CTDIvol (0018,9345),
  Image and Fluoroscopy Area Dose Product (0018,115E, dGy·cm²), Entrance Dose
  in mGy (0040,8302), the Radiopharmaceutical Information Sequence's
  Radionuclide Total Dose (0018,1074, MBq);
- or nothing: the radiologist writes it by hand (source ``manual``).

Every figure is converted to the units fixed for ``Report.exposure_data``
(mGy, mGy·cm, Gy·cm², MBq), whatever unit the content item states; an item in
a unit not known here is left out rather than guessed. The text is fixed
Italian (the report's language, whatever the page's).

The parsing functions take pydicom data sets and touch no database; the
functions at the end read the study's instances through
:mod:`archive.storage.retrieve` (headers only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kernel.errors import Invalid

if TYPE_CHECKING:
    # Only for hints: the ORM and storage are imported when a study is read.
    from pydicom.dataset import Dataset

    from archive.models import Instance, Report, Study

logger = logging.getLogger(__name__)

XRAY_RDSR = "1.2.840.10008.5.1.4.1.1.88.67"
RADIOPHARMACEUTICAL_RDSR = "1.2.840.10008.5.1.4.1.1.88.68"
ENHANCED_XRAY_RDSR = "1.2.840.10008.5.1.4.1.1.88.76"
RDSR_SOP_CLASSES = (XRAY_RDSR, ENHANCED_XRAY_RDSR, RADIOPHARMACEUTICAL_RDSR)

# The modalities of procedures with ionising radiation (the report must say the exposure).
IONISING_MODALITIES = ("CT", "CR", "DX", "MG", "XA", "RF", "IO", "PX", "NM", "PT")
PROJECTION_MODALITIES = ("CR", "DX", "MG", "XA", "RF", "IO", "PX")

SOURCE_RDSR = "rdsr"
SOURCE_IMAGES = "images"
SOURCE_MANUAL = "manual"

# Reading images' headers for the fallback: every image of a projection series (each
# exposure has its own DAP), one per CT, NM or PET series; never more than this in all.
MAX_IMAGE_HEADERS = 500

# The procedure as the report names it.
MODALITY_NAMES = {
    "CT": "TC",
    "CR": "Radiografia",
    "DX": "Radiografia",
    "MG": "Mammografia",
    "XA": "Angiografia",
    "RF": "Radioscopia",
    "IO": "Radiografia endorale",
    "PX": "Ortopantomografia",
    "NM": "Medicina nucleare",
    "PT": "PET",
}
SOURCE_TEXTS = {
    SOURCE_RDSR: "Fonte: Radiation Dose SR della modalità.",
    SOURCE_IMAGES: "Fonte: attributi di dose delle immagini (la modalità non ha inviato il Radiation Dose SR).",
    SOURCE_MANUAL: "Fonte: inserita dal medico.",
}

# Unit (UCUM code) -> factor to the fixed unit of each quantity.
_DOSE_MGY = {"mGy": 1.0, "Gy": 1000.0, "dGy": 100.0, "cGy": 10.0, "uGy": 0.001, "mGy{air}": 1.0}
_DLP_MGYCM = {"mGy.cm": 1.0, "mGy*cm": 1.0, "Gy.cm": 1000.0, "mGy.mm": 0.1}
_DAP_GYCM2 = {
    "Gy.m2": 10000.0,
    "dGy.cm2": 0.1,
    "cGy.cm2": 0.01,
    "mGy.cm2": 0.001,
    "uGy.m2": 0.01,
    "uGy.cm2": 0.000001,
    "Gy.cm2": 1.0,
    "mGy.m2": 10.0,
}
_ACTIVITY_MBQ = {"MBq": 1.0, "GBq": 1000.0, "kBq": 0.001, "Bq": 0.000001, "mCi": 37.0, "uCi": 0.037}

# The concepts read (DCM unless said).
CT_ACCUMULATED = "113811"  # CT Accumulated Dose Data
DLP_TOTAL = "113813"  # CT Dose Length Product Total
CT_ACQUISITION = "113819"  # CT Acquisition (one irradiation event)
CTDIVOL = "113830"  # Mean CTDIvol
DLP = "113838"  # DLP
ACQUISITION_PROTOCOL = "125203"
TARGET_REGION = "123014"
DAP_TOTAL = "113722"  # Dose Area Product Total
DOSE_RP_TOTAL = "113725"  # Dose (RP) Total
ENTRANCE_AT_RP = "111636"  # Entrance Exposure at RP
DAP_EVENT = "122130"  # Dose Area Product (per irradiation event)
ADMINISTERED_ACTIVITY = "113507"
RADIOPHARMACEUTICAL_AGENT = "349358000"  # SCT
RADIONUCLIDE = "89457008"  # SCT


class DoseError(Invalid):
    """An RDSR that cannot be read as one (not an SR, no content)."""


# --- the figures from a Radiation Dose SR -------------------------------------------


def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeValue) if seq else ""


def _items(ds: Dataset, code: str, value_type: str | None = None) -> list[Dataset]:
    """The content items named ``code`` anywhere under ``ds`` (highdicom's search)."""
    from highdicom.sr.utils import find_content_items

    found = find_content_items(ds, value_type=value_type, recursive=True)
    return [item for item in found if _concept(item) == code]


def _num(item: Dataset, units: dict[str, float]) -> float | None:
    """A NUM content item's value in the fixed unit (None for a unit not in ``units``)."""
    from highdicom.sr.value_types import NumContentItem

    num = NumContentItem.from_dataset(item)
    unit = str(num.unit.value)
    factor = units.get(unit)
    if factor is None:
        logger.warning("RDSR item %s in unknown unit %r: left out", _concept(item), unit)
        return None
    return float(num.value) * factor


def _first_num(ds: Dataset, code: str, units: dict[str, float]) -> float | None:
    for item in _items(ds, code, "NUM"):
        value = _num(item, units)
        if value is not None:
            return value
    return None


def _text_of(ds: Dataset, code: str) -> str:
    """The first TEXT or CODE item named ``code`` directly under ``ds``, as words."""
    for item in ds.get("ContentSequence") or []:
        if _concept(item) != code:
            continue
        if item.get("ValueType") == "TEXT":
            return str(item.get("TextValue") or "").strip()
        if item.get("ValueType") == "CODE" and item.get("ConceptCodeSequence"):
            return str(item.ConceptCodeSequence[0].get("CodeMeaning") or "").strip()
    return ""


def rdsr_figures(ds: Dataset) -> dict[str, Any]:
    """The exposure figures of one Radiation Dose SR (``exposure_data`` without ``source``).

    Raises
    ------
    DoseError
        ``ds`` is not a Radiation Dose SR with content.
    """
    if str(ds.get("SOPClassUID", "")) not in RDSR_SOP_CLASSES:
        raise DoseError(f"not a Radiation Dose SR: {ds.get('SOPClassUID', '')}")
    if not ds.get("ContentSequence"):
        raise DoseError("the Radiation Dose SR has no content")
    out: dict[str, Any] = {"rdsr_sop_instance_uid": str(ds.get("SOPInstanceUID", ""))}
    # CT: TID 10011.
    events = []
    for acquisition in _items(ds, CT_ACQUISITION, "CONTAINER"):
        ctdivol = _first_num(acquisition, CTDIVOL, _DOSE_MGY)
        dlp = _first_num(acquisition, DLP, _DLP_MGYCM)
        if ctdivol is None and dlp is None:
            continue  # a localiser without dose figures
        event: dict[str, Any] = {
            "label": _text_of(acquisition, ACQUISITION_PROTOCOL) or _text_of(acquisition, TARGET_REGION)
        }
        if ctdivol is not None:
            event["ctdivol_mgy"] = round(ctdivol, 4)
        if dlp is not None:
            event["dlp_mgycm"] = round(dlp, 4)
        events.append(event)
    dlp_total = _first_num(ds, DLP_TOTAL, _DLP_MGYCM)
    if events or dlp_total is not None:
        ct: dict[str, Any] = {"events": events}
        ctdis = [e["ctdivol_mgy"] for e in events if "ctdivol_mgy" in e]
        if ctdis:
            ct["ctdivol_max_mgy"] = max(ctdis)
        if dlp_total is None and any("dlp_mgycm" in e for e in events):
            dlp_total = sum(e.get("dlp_mgycm", 0.0) for e in events)
        if dlp_total is not None:
            ct["dlp_total_mgycm"] = round(dlp_total, 4)
        out["ct"] = ct
    # Projection X-ray: TID 10001/10002 (accumulated), else the events' own DAP.
    projection: dict[str, Any] = {}
    dap = _first_num(ds, DAP_TOTAL, _DAP_GYCM2)
    if dap is None:
        per_event = [v for v in (_num(i, _DAP_GYCM2) for i in _items(ds, DAP_EVENT, "NUM")) if v is not None]
        dap = sum(per_event) if per_event else None
    if dap is not None:
        projection["dap_total_gycm2"] = round(dap, 6)
    entrance = _first_num(ds, DOSE_RP_TOTAL, _DOSE_MGY)
    if entrance is None:
        entrance = _first_num(ds, ENTRANCE_AT_RP, _DOSE_MGY)
    if entrance is not None:
        projection["entrance_dose_mgy"] = round(entrance, 4)
    if projection:
        out["projection"] = projection
    # NM: TID 10021.
    activity = _first_num(ds, ADMINISTERED_ACTIVITY, _ACTIVITY_MBQ)
    if activity is not None:
        nm: dict[str, Any] = {"activity_mbq": round(activity, 3)}
        agent = ""
        for item in _items(ds, RADIOPHARMACEUTICAL_AGENT, "CODE") + _items(ds, RADIONUCLIDE, "CODE"):
            agent = str(item.ConceptCodeSequence[0].get("CodeMeaning") or "").strip()
            if agent:
                break
        if agent:
            nm["radiopharmaceutical"] = agent
        out["nm"] = nm
    return out


# --- the figures from the images' own attributes ----------------------------------


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def images_figures(datasets: Iterable[Dataset]) -> dict[str, Any]:
    """The exposure figures the images' headers carry ({} when none does).

    CTDIvol per CT series (its highest); DAP and entrance dose summed over the
    projection images (each is one exposure); the first radiopharmaceutical
    with a total dose.
    """
    ct_series: dict[str, dict[str, Any]] = {}
    dap = entrance = 0.0
    has_dap = has_entrance = False
    nm: dict[str, Any] = {}
    for ds in datasets:
        ctdivol = _float(ds.get("CTDIvol"))
        if ctdivol is not None:
            uid = str(ds.get("SeriesInstanceUID", ""))
            series = ct_series.setdefault(uid, {"label": str(ds.get("SeriesDescription") or "").strip()})
            series["ctdivol_mgy"] = max(series.get("ctdivol_mgy", 0.0), round(ctdivol, 4))
        value = _float(ds.get("ImageAndFluoroscopyAreaDoseProduct"))
        if value is not None:
            dap += value * 0.1  # dGy·cm² -> Gy·cm²
            has_dap = True
        value = _float(ds.get("EntranceDoseInmGy"))
        if value is not None:
            entrance += value
            has_entrance = True
        if not nm:
            for info in ds.get("RadiopharmaceuticalInformationSequence") or []:
                activity = _float(info.get("RadionuclideTotalDose"))
                if activity is None:
                    continue
                nm["activity_mbq"] = round(activity, 3)
                agent = str(info.get("Radiopharmaceutical") or "").strip()
                for key in ("RadiopharmaceuticalCodeSequence", "RadionuclideCodeSequence"):
                    if not agent and info.get(key):
                        agent = str(info.get(key)[0].get("CodeMeaning") or "").strip()
                if agent:
                    nm["radiopharmaceutical"] = agent
                break
    out: dict[str, Any] = {}
    if ct_series:
        events = list(ct_series.values())
        out["ct"] = {"events": events, "ctdivol_max_mgy": max(e["ctdivol_mgy"] for e in events)}
    projection: dict[str, Any] = {}
    if has_dap:
        projection["dap_total_gycm2"] = round(dap, 6)
    if has_entrance:
        projection["entrance_dose_mgy"] = round(entrance, 4)
    if projection:
        out["projection"] = projection
    if nm:
        out["nm"] = nm
    return out


# --- the text ----------------------------------------------------------------------


def number_it(value: float, digits: int = 1) -> str:
    """``412.5`` -> ``"412,5"``: the Italian decimal comma, no thousands separator
    (fixed, not the page's locale: the text is the report's)."""
    text = f"{value:.{digits}f}"
    if digits and "." in text:
        text = text.rstrip("0").rstrip(".") if digits > 1 else text
    return text.replace(".", ",")


def _agent(name: str) -> str:
    """DICOM writes the mass number as ``F^18^``: print ``F18``."""
    return name.replace("^", "")


def exposure_text(data: dict[str, Any]) -> str:
    """The Italian text proposed for ``data`` (``exposure_data``); "" when it has no figure."""
    name = MODALITY_NAMES.get(str(data.get("modality") or ""), "")
    lines = []
    ct = data.get("ct") or {}
    if ct:
        parts = []
        events = ct.get("events") or []
        if "ctdivol_max_mgy" in ct:
            label = "CTDIvol" if len(events) <= 1 else "CTDIvol massimo"
            parts.append(f"{label} {number_it(ct['ctdivol_max_mgy'])} mGy")
        if "dlp_total_mgycm" in ct:
            parts.append(f"DLP totale {number_it(ct['dlp_total_mgycm'])} mGy·cm")
        count = len(events)
        tail = f" ({count} acquisizion{'e' if count == 1 else 'i'})" if count else ""
        lines.append(f"{MODALITY_NAMES['CT']}: " + "; ".join(parts) + tail + ".")
        detailed = [e for e in events if "ctdivol_mgy" in e or "dlp_mgycm" in e]
        if len(detailed) > 1:
            items = []
            for i, event in enumerate(detailed, 1):
                figures = []
                if "ctdivol_mgy" in event:
                    figures.append(f"CTDIvol {number_it(event['ctdivol_mgy'])} mGy")
                if "dlp_mgycm" in event:
                    figures.append(f"DLP {number_it(event['dlp_mgycm'])} mGy·cm")
                items.append(f"{event.get('label') or f'acquisizione {i}'} " + ", ".join(figures))
            lines.append("Acquisizioni: " + "; ".join(items) + ".")
    projection = data.get("projection") or {}
    if projection:
        parts = []
        if "dap_total_gycm2" in projection:
            parts.append(f"prodotto dose-area (DAP) {number_it(projection['dap_total_gycm2'], 2)} Gy·cm²")
        if "entrance_dose_mgy" in projection:
            parts.append(f"dose in ingresso {number_it(projection['entrance_dose_mgy'], 2)} mGy")
        label = name if name and data.get("modality") in PROJECTION_MODALITIES else "Radiografia"
        lines.append(f"{label}: " + "; ".join(parts) + ".")
    nm = data.get("nm") or {}
    if nm.get("activity_mbq") is not None:
        label = name if data.get("modality") in ("NM", "PT") else MODALITY_NAMES["NM"]
        agent = f" di {_agent(nm['radiopharmaceutical'])}" if nm.get("radiopharmaceutical") else ""
        lines.append(f"{label}: attività somministrata {number_it(nm['activity_mbq'], 0)} MBq{agent}.")
    if not lines:
        return ""
    lines.append(SOURCE_TEXTS.get(str(data.get("source")), ""))
    return "\n".join(line for line in lines if line)


# --- a study's proposal --------------------------------------------------------------


def ionising_modality(modalities: Iterable[str]) -> str:
    """The first ionising modality among ``modalities`` ("" when none)."""
    for modality in modalities:
        if modality in IONISING_MODALITIES:
            return modality
    return ""


def _rdsr_instances(study: Study) -> list[Instance]:
    from archive.models import Instance

    return list(
        Instance.objects.filter(series__study=study, sop_class_uid__in=RDSR_SOP_CLASSES).order_by("-received_at", "-pk")
    )


def study_is_ionising(*, study: Study) -> bool:
    """Whether the report of ``study`` must say the exposure: an ionising modality, or an RDSR."""
    if ionising_modality(study.modality_list()):
        return True
    return bool(_rdsr_instances(study))


def _header(instance: Instance) -> Dataset:
    from pydicom import dcmread

    from archive.storage import retrieve

    with retrieve.instance_open(instance) as fh:
        return dcmread(fh, stop_before_pixels=True)


def _image_headers(study: Study) -> list[Dataset]:
    from archive.models import Instance, Series

    headers: list[Dataset] = []
    for series in Series.objects.filter(study=study, modality__in=IONISING_MODALITIES).order_by("series_number", "pk"):
        instances = Instance.objects.filter(series=series, rows__isnull=False).order_by("instance_number", "pk")
        if series.modality not in PROJECTION_MODALITIES:
            instances = instances[:1]
        for instance in instances[: MAX_IMAGE_HEADERS - len(headers)]:
            try:
                headers.append(_header(instance))
            except Exception:  # one unreadable image does not hide the others' figures
                logger.exception("dose: cannot read the header of instance %s", instance.sop_instance_uid)
        if len(headers) >= MAX_IMAGE_HEADERS:
            break
    return headers


def study_exposure_proposal(*, study: Study) -> dict[str, Any]:
    """The ``exposure_data`` proposed for the report of ``study`` ({} for a study without
    ionising radiation); ``source`` is ``manual`` with no figures when nothing was found.

    The newest readable RDSR of the study wins; without one, the images' attributes.
    """
    rdsrs = _rdsr_instances(study)
    modality = ionising_modality(study.modality_list())
    if not modality and not rdsrs:
        return {}
    for instance in rdsrs:
        try:
            figures = rdsr_figures(_header(instance))
        except Exception:  # a damaged or unreadable RDSR: the next one, or the images
            logger.exception("dose: cannot read the RDSR %s", instance.sop_instance_uid)
            continue
        if set(figures) - {"rdsr_sop_instance_uid"}:
            if not modality:
                modality = "CT" if "ct" in figures else ("NM" if "nm" in figures else "DX")
            return {"source": SOURCE_RDSR, "modality": modality, **figures}
    figures = images_figures(_image_headers(study))
    if figures:
        return {"source": SOURCE_IMAGES, "modality": modality, **figures}
    return {"source": SOURCE_MANUAL, "modality": modality}


def exposure_confirmed(report: Report) -> bool:
    """Whether the radiologist confirmed the exposure text of ``report`` (a draft or a signed version)."""
    return bool(report.exposure.strip()) and bool((report.exposure_data or {}).get("confirmed"))


# --- the patient's dose register -------------------------------------------------------

# exposure_data's figures -> (DoseRecord quantity, unit).
REGISTER_FIGURES = (
    ("ct", "ctdivol_max_mgy", "ctdivol_max", "mGy"),
    ("ct", "dlp_total_mgycm", "dlp_total", "mGy·cm"),
    ("projection", "dap_total_gycm2", "dap_total", "Gy·cm²"),
    ("projection", "entrance_dose_mgy", "entrance_dose", "mGy"),
    ("nm", "activity_mbq", "activity", "MBq"),
)


def register_rows(data: dict[str, Any]) -> list[tuple[str, float, str, str]]:
    """The register's (quantity, value, unit, detail) of one report's ``exposure_data``."""
    rows = []
    for group, key, quantity, unit in REGISTER_FIGURES:
        value = _float((data.get(group) or {}).get(key))
        if value is not None:
            detail = str((data.get("nm") or {}).get("radiopharmaceutical") or "") if group == "nm" else ""
            rows.append((quantity, value, unit, _agent(detail)[:256]))
    return rows


def dose_register_write(*, study_pk: int) -> int:
    """Write the study's rows of the dose register from its latest signed report; their number.

    Idempotent: run again (a signal delivered twice, a correction signed
    since) it leaves one row per quantity with the latest version's figures,
    and removes those the latest version no longer has.
    """
    from django.db import transaction

    from archive.models import DoseRecord, Report, Study
    from archive.reporting.booked import booked_exam

    study = Study.objects.filter(pk=study_pk).first()
    if study is None:
        return 0
    report = Report.objects.filter(study=study, status=Report.Status.SIGNED).order_by("-version").first()
    if report is None:
        return 0
    data = report.exposure_data or {}
    rows = register_rows(data) if report.exposure.strip() else []
    booked = booked_exam(study.pk)
    common = {
        "patient_id": study.patient_id,
        "report": report,
        "performed_on": study.performed_on(),
        "modality": str(data.get("modality") or ionising_modality(study.modality_list()) or "")[:16],
        "procedure_code": booked.procedure_code[:32] if booked else "",
        "procedure": (booked.procedure_description if booked else study.study_description)[:256],
        "source": str(data.get("source") or "")[:16],
    }
    with transaction.atomic():
        DoseRecord.objects.filter(study=study).exclude(quantity__in=[q for q, *_ in rows]).delete()
        for quantity, value, unit, detail in rows:
            DoseRecord.objects.update_or_create(
                study=study, quantity=quantity, defaults={**common, "value": value, "unit": unit, "detail": detail}
            )
    return len(rows)


def dose_register_on_signed(sender: Any, *, study_pk: int, **kwargs: Any) -> None:
    """``archive.signals.report_signed`` (sent on commit): the register follows the signed report.
    A few rows of the database, so here rather than in a task."""
    dose_register_write(study_pk=study_pk)
