"""The FSE 2.0 gateway's REST interface, as its documentation describes it
(ministero-salute/it-fse-gtw-dispatcher, README "Servizi di validazione e
pubblicazione"), encoded here as this project's own client.

Endpoints (below the base URL, which includes the version, e.g.
``https://modipa-val.fse.salute.gov.it/govway/rest/in/FSE/gateway/v1``):

``POST /documents/validation``
    multipart: ``requestBody`` (JSON: ``healthDataFormat`` CDA, ``mode``
    ATTACHMENT, ``activity`` VALIDATION) and ``file`` (the PDF with ``cda.xml``
    attached). Answers ``workflowInstanceId`` and ``traceID``.
``POST /documents``
    publication: ``requestBody`` with the document's metadata (below) and the
    ``workflowInstanceId`` of its validation, and the same ``file``.
``PUT /documents/{idDoc}``
    replace the document ``idDoc`` with a new one (same body, new ``identificativoDoc``).
``DELETE /documents/{idDoc}``
    delete the document.
``PUT /documents/{idDoc}/metadata``
    update the metadata (here: the oscuramento, ``attiCliniciRegoleAccesso``).

Every call carries two JWTs, RS256, with the signing certificate in ``x5c``:
``Authorization: Bearer`` (``iss`` "auth:" + the certificate's CN, ``sub``,
``aud``, ``iat``, ``exp``, ``jti``) and ``FSE-JWT-Signature`` (``iss``
"integrity:" + CN and the custom claims: ``subject_organization_id``,
``subject_organization``, ``locality``, ``subject_role``, ``person_id``,
``patient_consent``, ``purpose_of_use``, ``resource_hl7_type``, ``action_id``,
``attachment_hash`` = SHA-256 of the file sent, ``subject_application_*``).

Errors come as ``application/problem+json``: ``traceID``, ``spanID``,
``type``, ``title``, ``detail``, ``status``, ``instance``.

The KOS manifest (IHE XDS-I.b) does not go to the national gateway, which
takes CDA documents only: it goes to the region's imaging document registry
(``PACS_FSE_MANIFEST_URL``), ``POST {url}`` multipart with ``metadata`` (the
XDS DocumentEntry as JSON) and ``file`` (the KOS, ``application/dicom``), and
``DELETE {url}/{uniqueId}``; the same JWTs authenticate it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# --- The value sets the gateway checks (README, "Tabelle di riferimento") ---------------------
HEALTH_DATA_FORMAT = "CDA"
INJECTION_MODE = "ATTACHMENT"
FACILITY_TYPES = frozenset({"Ospedale", "Prevenzione", "Territorio", "SistemaTS", "Cittadino", "MdsPN-DGC"})
HIGH_LEVEL_TYPES = frozenset(
    {"WOR", "REF", "LDO", "RIC", "SUM", "TAC", "PRS", "PRE", "ESE", "PDC", "VAC", "CER", "VRB", "CON", "CNT"}
)
CLINICAL_ACTIVITIES = frozenset({"PHR", "CON", "DIS", "ERP", "Sistema TS", "INI", "PN-DGC", "OBS"})
# Affinity Domain Italia, eventCodeList: the access rules a document carries.
ACCESS_RULE_CONCEALED = "P99"  # oscuramento del documento (chosen by the citizen)
ACCESS_RULE_HIDDEN_FROM_PARENT = "P97"  # oscuramento al genitore
ACCESS_RULE_HIDDEN_FROM_PATIENT = "P98"  # oscuramento all'assistito (until a doctor delivers it)
ACCESS_RULES = frozenset({ACCESS_RULE_CONCEALED, ACCESS_RULE_HIDDEN_FROM_PARENT, ACCESS_RULE_HIDDEN_FROM_PATIENT})
ACTIONS = frozenset({"CREATE", "READ", "UPDATE", "DELETE"})
PURPOSES = frozenset({"TREATMENT", "EMERGENCY", "PERSONAL", "SYSADMIN", "UPDATE"})
# The Referto di Radiologia (LOINC 68604-8) as resource_hl7_type.
REPORT_HL7_TYPE = "('68604-8^^2.16.840.1.113883.6.1')"
CF_ASSIGNER = "&2.16.840.1.113883.2.9.4.3.2&ISO"  # codice fiscale, CX.4


def person_id(codice_fiscale: str) -> str:
    """A codice fiscale as the CX the gateway reads (``person_id``, ``sub``)."""
    return f"{codice_fiscale}^^^{CF_ASSIGNER}"


def hl7_timestamp(when: dt.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S")


# --- Answers --------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One HTTP exchange: the request's step and the answer (or the network error)."""

    step: str
    method: str
    url: str
    status_code: int | None = None
    body: str = ""
    error: str = ""
    duration_ms: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def trace_id(self) -> str:
        return str(self.data.get("traceID") or "")

    @property
    def workflow_instance_id(self) -> str:
        return str(self.data.get("workflowInstanceId") or "")

    @property
    def transient(self) -> bool:
        """Worth sending again as it is: the network, a timeout, a gateway down or busy."""
        return self.status_code is None or self.status_code in {408, 425, 429} or self.status_code >= 500

    def problem_text(self) -> str:
        """The gateway's error as a person reads it: title, detail, type, traceID (or the network error)."""
        if self.status_code is None:
            return self.error
        parts = [f"HTTP {self.status_code}"]
        for key in ("title", "detail", "type", "instance"):
            if self.data.get(key):
                parts.append(f"{key}: {self.data[key]}")
        if self.trace_id:
            parts.append(f"traceID: {self.trace_id}")
        if len(parts) == 1 and self.body:
            parts.append(self.body[:2000])
        return "\n".join(parts)


# --- Credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    key: Any
    x5c: str
    common_name: str


@lru_cache(maxsize=4)
def _credentials_read(key_file: str, cert_file: str, password: str) -> Credentials:
    try:
        with open(key_file, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=password.encode() or None)
        with open(cert_file, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"FSE gateway credentials ({key_file}, {cert_file}) cannot be read: {exc}") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    return Credentials(key=key, x5c=x5c, common_name=cn)


def credentials() -> Credentials:
    key_file = settings.PACS_FSE_JWT_KEY_FILE
    cert_file = settings.PACS_FSE_JWT_CERT_FILE
    if not key_file or not cert_file:
        raise ImproperlyConfigured(
            "PACS_FSE_JWT_KEY_FILE and PACS_FSE_JWT_CERT_FILE must name the signing key and its certificate"
        )
    return _credentials_read(key_file, cert_file, settings.PACS_FSE_JWT_KEY_PASSWORD)


def base_url() -> str:
    return str(settings.PACS_FSE_GATEWAY_URL).rstrip("/")


def tokens(
    *, patient_cf: str, action: str, purpose: str, attachment: bytes | None, hl7_type: str | None
) -> dict[str, str]:
    """The two JWT headers of one call (``Authorization`` and ``FSE-JWT-Signature``)."""
    if action not in ACTIONS or purpose not in PURPOSES:
        raise ValueError(f"action {action!r} / purpose {purpose!r} not in the gateway's tables")
    cred = credentials()
    issuer = settings.PACS_FSE_JWT_ISSUER or cred.common_name
    now = int(time.time())
    lifetime = int(settings.PACS_FSE_JWT_LIFETIME_SECONDS)
    common = {
        "sub": settings.PACS_FSE_JWT_SUBJECT,
        "aud": settings.PACS_FSE_JWT_AUDIENCE or base_url(),
        "iat": now,
        "exp": now + lifetime,
    }
    headers = {"x5c": [cred.x5c], "typ": "JWT"}
    auth = jwt.encode({**common, "iss": f"auth:{issuer}", "jti": str(uuid.uuid4())}, cred.key, "RS256", headers)
    claims: dict[str, Any] = {
        **common,
        "iss": f"integrity:{issuer}",
        "jti": str(uuid.uuid4()),
        "subject_organization_id": settings.PACS_FSE_ORGANIZATION_ID,
        "subject_organization": settings.PACS_FSE_ORGANIZATION,
        "locality": settings.PACS_FSE_LOCALITY,
        "subject_role": settings.PACS_FSE_SUBJECT_ROLE,
        "person_id": person_id(patient_cf),
        "patient_consent": True,
        "purpose_of_use": purpose,
        "action_id": action,
        "subject_application_id": settings.PACS_FSE_APPLICATION_ID,
        "subject_application_vendor": settings.PACS_FSE_APPLICATION_VENDOR,
        "subject_application_version": settings.PACS_FSE_APPLICATION_VERSION,
    }
    if hl7_type:
        claims["resource_hl7_type"] = hl7_type
    if attachment is not None:
        claims["attachment_hash"] = hashlib.sha256(attachment).hexdigest()
    signature = jwt.encode(claims, cred.key, "RS256", headers)
    return {"Authorization": f"Bearer {auth}", "FSE-JWT-Signature": signature}


# --- Calls ----------------------------------------------------------------------------------


def _call(
    step: str,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    files: dict[str, Any] | None = None,
    json_body: dict[str, Any] | None = None,
) -> Exchange:
    exchange = Exchange(step=step, method=method, url=url)
    started = time.monotonic()
    try:
        response = requests.request(
            method,
            url,
            headers={"Accept": "application/json", **headers},
            files=files,
            json=json_body,
            timeout=float(settings.PACS_FSE_TIMEOUT_SECONDS),
        )
    except requests.RequestException as exc:
        exchange.error = f"{type(exc).__name__}: {exc}"[:2000]
    else:
        exchange.status_code = response.status_code
        exchange.body = response.text[:20000]
        try:
            data = response.json()
        except ValueError:
            data = None
        exchange.data = data if isinstance(data, dict) else {}
    exchange.duration_ms = int((time.monotonic() - started) * 1000)
    return exchange


def _document_files(body: dict[str, Any], pdf: bytes) -> dict[str, Any]:
    return {
        "requestBody": (None, json.dumps(body), "application/json"),
        "file": ("referto.pdf", pdf, "application/pdf"),
    }


def validate(*, pdf: bytes, patient_cf: str) -> Exchange:
    body = {"healthDataFormat": HEALTH_DATA_FORMAT, "mode": INJECTION_MODE, "activity": "VALIDATION"}
    headers = tokens(
        patient_cf=patient_cf, action="CREATE", purpose="TREATMENT", attachment=pdf, hl7_type=REPORT_HL7_TYPE
    )
    return _call(
        "validation", "POST", f"{base_url()}/documents/validation", headers=headers, files=_document_files(body, pdf)
    )


def publish(*, pdf: bytes, body: dict[str, Any], patient_cf: str) -> Exchange:
    headers = tokens(
        patient_cf=patient_cf, action="CREATE", purpose="TREATMENT", attachment=pdf, hl7_type=REPORT_HL7_TYPE
    )
    return _call("publication", "POST", f"{base_url()}/documents", headers=headers, files=_document_files(body, pdf))


def replace(*, target: str, pdf: bytes, body: dict[str, Any], patient_cf: str) -> Exchange:
    headers = tokens(patient_cf=patient_cf, action="UPDATE", purpose="UPDATE", attachment=pdf, hl7_type=REPORT_HL7_TYPE)
    url = f"{base_url()}/documents/{requests.utils.quote(target, safe='')}"
    return _call("replace", "PUT", url, headers=headers, files=_document_files(body, pdf))


def delete(*, target: str, patient_cf: str) -> Exchange:
    headers = tokens(
        patient_cf=patient_cf, action="DELETE", purpose="UPDATE", attachment=None, hl7_type=REPORT_HL7_TYPE
    )
    url = f"{base_url()}/documents/{requests.utils.quote(target, safe='')}"
    return _call("delete", "DELETE", url, headers=headers)


def metadata_update(*, target: str, body: dict[str, Any], patient_cf: str) -> Exchange:
    headers = tokens(
        patient_cf=patient_cf, action="UPDATE", purpose="UPDATE", attachment=None, hl7_type=REPORT_HL7_TYPE
    )
    url = f"{base_url()}/documents/{requests.utils.quote(target, safe='')}/metadata"
    return _call("metadata", "PUT", url, headers=headers, json_body=body)


def manifest_url() -> str:
    return str(settings.PACS_FSE_MANIFEST_URL).rstrip("/")


def manifest_publish(*, kos: bytes, entry: dict[str, Any], patient_cf: str) -> Exchange:
    headers = tokens(patient_cf=patient_cf, action="CREATE", purpose="TREATMENT", attachment=kos, hl7_type=None)
    files = {
        "metadata": (None, json.dumps(entry), "application/json"),
        "file": ("manifest.dcm", kos, "application/dicom"),
    }
    return _call("manifest", "POST", manifest_url(), headers=headers, files=files)


def manifest_delete(*, unique_id: str, patient_cf: str) -> Exchange:
    headers = tokens(patient_cf=patient_cf, action="DELETE", purpose="UPDATE", attachment=None, hl7_type=None)
    return _call("manifest_delete", "DELETE", f"{manifest_url()}/{unique_id}", headers=headers)
