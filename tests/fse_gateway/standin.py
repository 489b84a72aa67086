"""A stand-in for the FSE 2.0 gateway: a real HTTP server on 127.0.0.1, in a thread.

It checks what the gateway documents it checks (ministero-salute/it-fse-gtw-dispatcher:
the multipart parts, the ``requestBody`` fields and their value sets, both JWTs
signed with the producer's certificate and their claims, ``attachment_hash``,
the CDA attached to the PDF as valid by the project's schema and rules) and
answers as the gateway documents its answers: ``traceID``/``spanID``/
``workflowInstanceId`` on success, ``application/problem+json`` (``type``,
``title``, ``detail``, ``status``, ``instance``) on error, 409 for a document
published twice, 404 for one it does not hold. It also stands in for the
region's XDS-I.b registry that takes the KOS manifest.

A test can make it answer errors (:meth:`Gateway.fail_next`) or stop it
(:meth:`Gateway.stop`, :meth:`Gateway.start`: the same port).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fse_gateway import gateway as spec

CF_PERSON = re.compile(r"^[A-Z0-9]{16}\^\^\^&2\.16\.840\.1\.113883\.2\.9\.4\.3\.2&ISO$")
TIMESTAMP = re.compile(r"^\d{14}$")
OID_ID = re.compile(r"^[0-2](\.\d+)+(\^.+)?$")
XON = re.compile(r"^[^^]+\^\^\^\^\^&[0-9.]+&ISO\^\^\^\^\S+$")
PUBLICATION_REQUIRED = (
    "tipologiaStruttura",
    "identificativoDoc",
    "identificativoRep",
    "tipoDocumentoLivAlto",
    "assettoOrganizzativo",
    "tipoAttivitaClinica",
    "identificativoSottomissione",
    "workflowInstanceId",
    "healthDataFormat",
    "mode",
)
PRACTICE_SETTING = re.compile(r"^AD_PSC\d{3}$")


class Refused(Exception):
    def __init__(self, status: int, title: str, detail: str, kind: str = "/msg/validation-error") -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.kind = status, title, detail, kind


@dataclass
class Received:
    method: str
    path: str
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    file: bytes = b""
    cda: bytes | None = None
    answer: dict[str, Any] = field(default_factory=dict)


def cda_checker() -> Any:
    """The project's own CDA checks (``archive.reporting``, the ``cda`` branch); None when absent."""
    try:
        from archive.reporting.cda import cda_problems
        from archive.reporting.pdfa import pdf_attachment
    except ImportError:
        return None
    return pdf_attachment, cda_problems


class Gateway:
    def __init__(self, *, cert_pem: bytes) -> None:
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.public_key = cert.public_key()
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.reset()

    # --- the test's controls ---
    def reset(self) -> None:
        with self.lock:
            self.received: list[Received] = []
            self.documents: dict[str, dict[str, Any]] = {}
            self.workflows: dict[str, str] = {}  # workflowInstanceId -> attachment hash validated
            self.manifests: dict[str, dict[str, Any]] = {}
            self.faults: list[tuple[str, int]] = []

    def fail_next(self, status: int, *, path: str = "", count: int = 1) -> None:
        """The next ``count`` requests whose path starts with ``path`` answer ``status`` (a documented error)."""
        with self.lock:
            self.faults.extend([(path, status)] * count)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def manifest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/xds-i/manifests"

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"gateway": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="fse-standin", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def answered(self, path_prefix: str = "", method: str = "") -> list[Received]:
        return [r for r in self.received if r.path.startswith(path_prefix) and (not method or r.method == method)]

    # --- the checks ---
    def check_tokens(self, headers: Any, *, action: str, purpose: str, file: bytes | None, hl7_type: bool) -> dict:
        auth = headers.get("Authorization", "")
        signature = headers.get("FSE-JWT-Signature", "")
        if not auth.startswith("Bearer ") or not signature:
            raise Refused(
                403,
                "Token jwt mancante o non valido",
                "Authorization Bearer e FSE-JWT-Signature richiesti",
                "/msg/jwt-missing",
            )
        claims = {}
        for token, prefix in ((auth[7:], "auth:"), (signature, "integrity:")):
            try:
                header = jwt.get_unverified_header(token)
                if header.get("alg") != "RS256" or header.get("x5c") != [self.x5c]:
                    raise Refused(403, "Token jwt non valido", "x5c: certificato non riconosciuto", "/msg/jwt-cert")
                data = jwt.decode(
                    token,
                    self.public_key,  # type: ignore[arg-type]
                    algorithms=["RS256"],
                    audience=self.base_url,
                    options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]},
                )
            except jwt.PyJWTError as exc:
                raise Refused(401, "Unauthorized", f"JWT non valido: {exc}", "/msg/jwt") from exc
            if not str(data["iss"]).startswith(prefix) or len(data["iss"]) <= len(prefix):
                raise Refused(403, "Token jwt non valido", f"iss deve iniziare con {prefix}", "/msg/jwt-iss")
            if not CF_PERSON.match(str(data["sub"])):
                raise Refused(403, "Token jwt non valido", "sub: codice fiscale in formato CX atteso", "/msg/jwt-sub")
            claims = data
        required = (
            "subject_organization_id",
            "subject_organization",
            "locality",
            "subject_role",
            "person_id",
            "patient_consent",
            "purpose_of_use",
            "action_id",
            "subject_application_id",
            "subject_application_vendor",
            "subject_application_version",
        )
        missing = [name for name in required if name not in claims]
        if missing:
            raise Refused(403, "Token jwt non valido", f"claim mancanti: {missing}", "/msg/jwt-claims")
        if claims["action_id"] != action or claims["purpose_of_use"] != purpose:
            raise Refused(
                403,
                "Token jwt non valido",
                f"action_id/purpose_of_use {claims['action_id']}/{claims['purpose_of_use']}, attesi {action}/{purpose}",
                "/msg/jwt-action",
            )
        if not CF_PERSON.match(str(claims["person_id"])):
            raise Refused(403, "Token jwt non valido", "person_id non in formato CX", "/msg/jwt-person")
        if not XON.match(str(claims["locality"])):
            raise Refused(403, "Token jwt non valido", "locality non in formato XON", "/msg/jwt-locality")
        if claims["patient_consent"] is not True:
            raise Refused(403, "Token jwt non valido", "patient_consent deve essere true", "/msg/jwt-consent")
        if hl7_type and claims.get("resource_hl7_type") != spec.REPORT_HL7_TYPE:
            raise Refused(
                403, "Token jwt non valido", "resource_hl7_type del referto di radiologia atteso", "/msg/jwt-type"
            )
        if file is not None and claims.get("attachment_hash") != hashlib.sha256(file).hexdigest():
            raise Refused(403, "Token jwt non valido", "attachment_hash non corrisponde al file", "/msg/jwt-hash")
        return claims

    def check_document(self, parts: dict[str, tuple[str, bytes]]) -> tuple[dict[str, Any], bytes, bytes | None]:
        if set(parts) != {"requestBody", "file"}:
            raise Refused(400, "Bad Request", f"parti multipart attese requestBody e file, ricevute {sorted(parts)}")
        body_type, raw_body = parts["requestBody"]
        file_type, pdf = parts["file"]
        if file_type != "application/pdf" or not pdf.startswith(b"%PDF-"):
            raise Refused(415, "Unsupported media type", "il file deve essere un PDF", "/msg/media-type")
        try:
            body = json.loads(raw_body)
        except ValueError as exc:
            raise Refused(400, "Bad Request", f"requestBody non JSON: {exc}") from exc
        if body.get("healthDataFormat") != "CDA" or body.get("mode") != "ATTACHMENT":
            raise Refused(400, "Bad Request", "healthDataFormat CDA e mode ATTACHMENT attesi")
        checker = cda_checker()
        cda = None
        if checker is not None:
            pdf_attachment, cda_problems = checker
            cda = pdf_attachment(pdf)
            if cda is None:
                raise Refused(
                    400, "Errore di validazione", "Il PDF non contiene il CDA allegato (cda.xml)", "/msg/cda-missing"
                )
            problems = cda_problems(cda)
            if problems:
                raise Refused(
                    400, "Errore di validazione", "; ".join(str(p) for p in problems)[:2000], "/msg/cda-schematron"
                )
        return body, pdf, cda

    def check_publication_body(self, body: dict[str, Any], pdf: bytes, cda: bytes | None) -> None:
        missing = [name for name in PUBLICATION_REQUIRED if not body.get(name)]
        if missing:
            raise Refused(400, "Bad Request", f"campi obbligatori mancanti: {missing}", "/msg/mandatory")
        checks = {
            "tipologiaStruttura": body["tipologiaStruttura"] in spec.FACILITY_TYPES,
            "tipoDocumentoLivAlto": body["tipoDocumentoLivAlto"] in spec.HIGH_LEVEL_TYPES,
            "tipoAttivitaClinica": body["tipoAttivitaClinica"] in spec.CLINICAL_ACTIVITIES,
            "assettoOrganizzativo": bool(PRACTICE_SETTING.match(body["assettoOrganizzativo"])),
            "attiCliniciRegoleAccesso": set(body.get("attiCliniciRegoleAccesso") or []) <= spec.ACCESS_RULES,
            "identificativoDoc": bool(OID_ID.match(body["identificativoDoc"])),
            "identificativoRep": bool(OID_ID.match(body["identificativoRep"])),
            "identificativoSottomissione": bool(OID_ID.match(body["identificativoSottomissione"])),
            "dataInizioPrestazione": bool(TIMESTAMP.match(body.get("dataInizioPrestazione", "00000000000000"))),
            "dataFinePrestazione": bool(TIMESTAMP.match(body.get("dataFinePrestazione", "00000000000000"))),
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise Refused(400, "Bad Request", f"valori non ammessi: {wrong}", "/msg/enum")
        if self.workflows.get(body["workflowInstanceId"]) != hashlib.sha256(pdf).hexdigest():
            raise Refused(
                400, "Bad Request", "workflowInstanceId: nessuna validazione di questo documento", "/msg/workflow"
            )
        if cda is not None:
            from fse_gateway.metadata import cda_document_id

            if cda_document_id(cda) != body["identificativoDoc"]:
                raise Refused(400, "Bad Request", "identificativoDoc diverso dall'id del CDA", "/msg/doc-id")

    def check_manifest(self, parts: dict[str, tuple[str, bytes]]) -> tuple[dict[str, Any], bytes]:
        import pydicom

        if set(parts) != {"metadata", "file"} or parts["file"][0] != "application/dicom":
            raise Refused(400, "Bad Request", f"parti attese metadata e file (application/dicom): {sorted(parts)}")
        entry = json.loads(parts["metadata"][1])
        kos = parts["file"][1]
        ds = pydicom.dcmread(io.BytesIO(kos))
        if ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.88.59":
            raise Refused(400, "Bad Request", "il manifest deve essere un Key Object Selection Document")
        if ds.ConceptNameCodeSequence[0].CodeValue != "113030":
            raise Refused(400, "Bad Request", "il KOS deve avere il titolo 113030 Manifest")
        if entry.get("uniqueId") != ds.SOPInstanceUID or entry.get("mimeType") != "application/dicom":
            raise Refused(400, "Bad Request", "uniqueId/mimeType non corrispondono al KOS")
        if entry.get("hash") != hashlib.sha1(kos, usedforsecurity=False).hexdigest() or entry.get("size") != len(kos):
            raise Refused(400, "Bad Request", "hash/size non corrispondono al KOS")
        if entry.get("formatCode", {}).get("code") != "1.2.840.10008.5.1.4.1.1.88.59":
            raise Refused(400, "Bad Request", "formatCode del manifest XDS-I.b atteso")
        if not any(ref.startswith(f"{ds.StudyInstanceUID}^") for ref in entry.get("referenceIdList", [])):
            raise Refused(400, "Bad Request", "referenceIdList senza lo StudyInstanceUID")
        return entry, kos


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    if not content_type.startswith("multipart/form-data"):
        raise Refused(415, "Unsupported media type", "multipart/form-data atteso", "/msg/media-type")
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        parts[str(name)] = (part.get_content_type(), payload if isinstance(payload, bytes) else b"")
    return parts


class _Handler(BaseHTTPRequestHandler):
    gateway: Gateway
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _answer(self, status: int, data: dict[str, Any], received: Received) -> None:
        payload = json.dumps(data).encode()
        # Recorded before the answer leaves: the client may read it, and the test look, at once.
        received.status, received.answer = status, data
        with self.gateway.lock:
            self.gateway.received.append(received)
        self.send_response(status)
        self.send_header("Content-Type", "application/problem+json" if status >= 400 else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _handle(self, method: str) -> None:
        gw = self.gateway
        path = self.path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        trace = uuid.uuid4().hex[:16]
        received = Received(method=method, path=path, status=0)
        with gw.lock:
            fault = next((f for f in gw.faults if path.startswith(f[0])), None)
            if fault is not None:
                gw.faults.remove(fault)
        if fault is not None:
            status = fault[1]
            titles = {400: "Bad Request", 401: "Unauthorized", 403: "Token jwt mancante o non valido", 409: "Conflict"}
            self._answer(
                status,
                {
                    "traceID": trace,
                    "spanID": trace,
                    "type": f"/msg/error-{status}",
                    "title": titles.get(status, "Service unavailable" if status >= 500 else "Error"),
                    "detail": f"Errore simulato {status} dal gateway di prova",
                    "status": status,
                    "instance": f"/msg/instance/{status}",
                },
                received,
            )
            return
        try:
            data, status = self._route(method, path, raw, received)
        except Refused as exc:
            self._answer(
                exc.status,
                {
                    "traceID": trace,
                    "spanID": trace,
                    "type": exc.kind,
                    "title": exc.title,
                    "detail": exc.detail,
                    "status": exc.status,
                    "instance": path,
                },
                received,
            )
            return
        self._answer(status, {"traceID": trace, "spanID": trace, **data}, received)

    def _route(self, method: str, path: str, raw: bytes, rec: Received) -> tuple[dict[str, Any], int]:
        gw = self.gateway
        ctype = self.headers.get("Content-Type", "")
        wif = f"2.16.840.1.113883.2.9.2.60.4.4.{uuid.uuid4().hex}^^^^urn:ihe:iti:xdw:2013:workflowInstanceId"
        if method == "POST" and path == "/v1/documents/validation":
            parts = _multipart(ctype, raw)
            body, pdf, cda = gw.check_document(parts)
            rec.claims = gw.check_tokens(self.headers, action="CREATE", purpose="TREATMENT", file=pdf, hl7_type=True)
            if body.get("activity") != "VALIDATION":
                raise Refused(400, "Bad Request", "activity VALIDATION attesa")
            rec.body, rec.file, rec.cda = body, pdf, cda
            with gw.lock:
                gw.workflows[wif] = hashlib.sha256(pdf).hexdigest()
            return {"workflowInstanceId": wif}, 201
        if method == "POST" and path == "/v1/documents":
            parts = _multipart(ctype, raw)
            body, pdf, cda = gw.check_document(parts)
            rec.claims = gw.check_tokens(self.headers, action="CREATE", purpose="TREATMENT", file=pdf, hl7_type=True)
            gw.check_publication_body(body, pdf, cda)
            rec.body, rec.file, rec.cda = body, pdf, cda
            with gw.lock:
                if body["identificativoDoc"] in gw.documents:
                    raise Refused(
                        409, "Conflict", "Documento già presente: identificativoDoc duplicato", "/msg/duplicate"
                    )
                gw.documents[body["identificativoDoc"]] = {"status": "current", "body": body, "cda": cda}
            return {"workflowInstanceId": body["workflowInstanceId"]}, 201
        match = re.fullmatch(r"/v1/documents/([^/]+)(/metadata)?", path)
        if match:
            doc = unquote(match.group(1))
            if method == "PUT" and not match.group(2):
                parts = _multipart(ctype, raw)
                body, pdf, cda = gw.check_document(parts)
                rec.claims = gw.check_tokens(self.headers, action="UPDATE", purpose="UPDATE", file=pdf, hl7_type=True)
                gw.check_publication_body(body, pdf, cda)
                rec.body, rec.file, rec.cda = body, pdf, cda
                with gw.lock:
                    if gw.documents.get(doc, {}).get("status") != "current":
                        raise Refused(404, "Not found", f"Documento {doc} non trovato", "/msg/not-found")
                    gw.documents[doc]["status"] = "replaced"
                    gw.documents[body["identificativoDoc"]] = {
                        "status": "current",
                        "body": body,
                        "cda": cda,
                        "replaces": doc,
                    }
                return {"workflowInstanceId": body["workflowInstanceId"]}, 200
            if method == "PUT":
                rec.claims = gw.check_tokens(self.headers, action="UPDATE", purpose="UPDATE", file=None, hl7_type=True)
                if not ctype.startswith("application/json"):
                    raise Refused(415, "Unsupported media type", "application/json atteso", "/msg/media-type")
                body = json.loads(raw)
                if not set(body.get("attiCliniciRegoleAccesso") or []) <= spec.ACCESS_RULES:
                    raise Refused(400, "Bad Request", "attiCliniciRegoleAccesso non ammessi", "/msg/enum")
                rec.body = body
                with gw.lock:
                    if gw.documents.get(doc, {}).get("status") != "current":
                        raise Refused(404, "Not found", f"Documento {doc} non trovato", "/msg/not-found")
                    gw.documents[doc]["body"] = {**gw.documents[doc]["body"], **body}
                return {"workflowInstanceId": wif}, 200
            if method == "DELETE":
                rec.claims = gw.check_tokens(self.headers, action="DELETE", purpose="UPDATE", file=None, hl7_type=False)
                with gw.lock:
                    if gw.documents.get(doc, {}).get("status") != "current":
                        raise Refused(404, "Not found", f"Documento {doc} non trovato", "/msg/not-found")
                    gw.documents[doc]["status"] = "deleted"
                return {"workflowInstanceId": wif}, 200
        if path == "/xds-i/manifests" and method == "POST":
            parts = _multipart(ctype, raw)
            entry, kos = gw.check_manifest(parts)
            rec.claims = gw.check_tokens(self.headers, action="CREATE", purpose="TREATMENT", file=kos, hl7_type=False)
            rec.body, rec.file = entry, kos
            with gw.lock:
                if entry["uniqueId"] in gw.manifests:
                    raise Refused(409, "Conflict", "Manifest già registrato", "/msg/duplicate")
                gw.manifests[entry["uniqueId"]] = {"status": "current", "entry": entry}
            return {}, 201
        match = re.fullmatch(r"/xds-i/manifests/([0-9.]+)", path)
        if match and method == "DELETE":
            rec.claims = gw.check_tokens(self.headers, action="DELETE", purpose="UPDATE", file=None, hl7_type=False)
            with gw.lock:
                if gw.manifests.get(match.group(1), {}).get("status") != "current":
                    raise Refused(404, "Not found", "Manifest non trovato", "/msg/not-found")
                gw.manifests[match.group(1)]["status"] = "deleted"
            return {}, 200
        raise Refused(404, "Not found", f"{method} {path}: endpoint sconosciuto", "/msg/not-found")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)
