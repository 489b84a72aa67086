"""The DICOM Conformance Statement (PS3.2 layout), written from the code's own tables.

``manage.py conformance_statement`` writes :func:`statement` to
``docs/DICOM_CONFORMANCE.md``; ``tests/archive/test_conformance.py`` fails when
the file differs from what the code says now, and compares its presentation
contexts with what the listener negotiates. Where each table comes from:

* presentation contexts, roles, implementation UID and version, the events
  answered, statuses, Query/Retrieve and worklist keys:
  :mod:`archive.dicomnet.conformance` (the listener's AE, ``start_listener``'s
  handlers, :mod:`archive.dicomnet.statuses`, :mod:`archive.query`, the worklist
  keys booking registers);
* DICOMweb resources, methods, parameters and media types:
  :mod:`archive.dicomweb.capabilities` (the URL patterns and their views);
* limits, ports and timeouts: the ``PACS_DICOM_*`` settings, with the default
  and the comment ``pacs/settings.py`` gives them (read from the file, so the
  statement does not depend on this machine's environment);
* character sets: pydicom's table of the terms it decodes, which the index uses.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings


@dataclass(frozen=True)
class MediaProfile:
    """What the citizen's DICOM download holds, as the portal makes it (``portal.media``)."""

    file_id: str  # the first instance's file ID, e.g. DICOM/S0001/I0001
    files: tuple[str, ...]  # beside the instances: DICOMDIR, README
    dicomdir_transfer_syntax: str
    record_types: tuple[str, ...]


MediaProfileSource = Callable[[], MediaProfile]
_media_profile: MediaProfileSource | None = None


def media_profile_source_register(source: MediaProfileSource | None) -> None:
    """The portal (``PortalConfig.ready``) registers what its DICOM media hold (the
    archive does not import the portal)."""
    global _media_profile
    _media_profile = source


TITLE = "DICOM Conformance Statement"
PRODUCT = "PACS regionale (archivio di immagini, Friuli Venezia Giulia)"
OUTPUT = Path("docs") / "DICOM_CONFORMANCE.md"


def _settings_defaults(prefixes: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(name, default, comment) of every setting starting with ``prefixes`` in pacs/settings.py."""
    path = Path(settings.BASE_DIR) / "pacs" / "settings.py"
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.startswith(prefixes) or not isinstance(node.value, ast.Call) or len(node.value.args) < 2:
            continue
        try:
            default = repr(_evaluate(node.value.args[1]))
        except ValueError:
            default = ast.unparse(node.value.args[1])
        comment: list[str] = []
        n = node.lineno - 2
        while n >= 0 and lines[n].lstrip().startswith("#"):
            comment.insert(0, lines[n].strip().lstrip("#").strip())
            n -= 1
        found.append((name, default, " ".join(comment)))
    return found


def _evaluate(node: ast.AST) -> object:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Add):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(left, int | float) and isinstance(right, int | float):
            return left * right if isinstance(node.op, ast.Mult) else left + right
    raise ValueError("not a constant")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _ts_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def statement() -> str:
    """The whole statement, as Markdown."""
    from pydicom.charset import python_encoding

    from archive import query
    from archive.dicomnet import conformance as net
    from archive.dicomnet import statuses as st
    from archive.dicomweb import capabilities as web

    contexts = net.presentation_contexts()
    impl = net.implementation()
    out: list[str] = [f"# {TITLE}", ""]
    out += [
        "<!-- Written by `manage.py conformance_statement` from the code (archive/conformance.py);"
        " do not edit: tests/archive/test_conformance.py fails when it differs. -->",
        "",
        f"Product: {PRODUCT}. Implementation Class UID `{impl.class_uid}`, "
        f"Implementation Version Name `{impl.version_name}`.",
        "",
    ]

    # --- 1 overview
    out += ["## 1 Conformance Statement Overview", ""]
    out += [
        "The archive stores what modalities and other archives send (C-STORE, STOW-RS), answers their "
        "queries (C-FIND, QIDO-RS, Modality Worklist) and sends images back (C-MOVE, C-GET, WADO-RS/URI). "
        "Objects are stored byte for byte in the transfer syntax received; the citizen's download is a "
        "PS3.10 file-set with a DICOMDIR.",
        "",
    ]
    rows = []
    for cx in contexts:
        scu = "Yes" if cx.scu_role else "No"
        rows.append([net.SERVICE_CLASSES[cx.service_class][0], cx.name, f"`{cx.abstract_syntax}`", scu, "Yes"])
    out += ["Table 1-1 Network Services", ""]
    out += _table(["Service", "SOP Class", "UID", "User of Service (SCU)", "Provider of Service (SCP)"], rows)
    out += [
        "SCU of a storage SOP class: the C-STORE sub-operations of C-GET (on the same association) "
        "and C-MOVE (on a new association to the move destination).",
        "",
        "Table 1-2 Media Services",
        "",
    ]
    out += _table(
        ["Media Storage Application Profile", "Write Files (FSC)", "Read Files (FSR)"],
        [["ZIP of a PS3.10 file-set with DICOMDIR (the citizen's download)", "Yes", "No"]],
    )

    # --- 2 table of contents
    sections = [
        "1 Conformance Statement Overview",
        "2 Table of Contents",
        "3 Introduction",
        "4 Networking",
        "5 Media Interchange",
        "6 Support of Character Sets",
        "7 Security",
        "8 DICOMweb",
    ]
    out += ["## 2 Table of Contents", ""]
    out += [f"- [{s}](#{re.sub(r'[^a-z0-9 -]', '', s.lower()).replace(' ', '-')})" for s in sections]
    out += [""]

    # --- 3 introduction
    out += [
        "## 3 Introduction",
        "",
        "### 3.1 Revision History",
        "",
        "This document is regenerated from the code at every change of the DICOM services; "
        "its history is the repository's (`git log docs/DICOM_CONFORMANCE.md`).",
        "",
        "### 3.2 Audience",
        "",
        "Integrators of modalities, workstations, other archives and DICOMweb clients connecting to the "
        "regional PACS, and the health authorities' system administrators.",
        "",
        "### 3.3 Remarks",
        "",
        "Conformance does not guarantee interoperability; test with the actual equipment. Who may associate "
        "and what each node may do is configured per facility (section 4.5).",
        "",
        "### 3.4 Terms and Definitions",
        "",
        "AE: Application Entity. SCU/SCP: Service Class User/Provider. FSC: File-set Creator. "
        "RemoteNode: a peer registered for one facility (AE title, addresses, rights, TLS certificate).",
        "",
        "### 3.5 References",
        "",
        "NEMA PS3 (DICOM) parts 2, 4, 7, 8, 10, 11, 15, 18; pynetdicom (the DICOM network implementation); pydicom.",
        "",
    ]

    # --- 4 networking
    out += ["## 4 Networking", "", "### 4.1 Implementation Model", "", "#### 4.1.1 Application Data Flow", ""]
    out += [
        "One AE, the listener (`manage.py dicom_listener`), serves every facility of the region, each under "
        "its own AE title (`Facility.ae_title`; the called AE title chooses the facility), on a plain and a "
        "TLS port. Received objects go to the facility's short-term tier and the index; queries and "
        "retrievals are limited by the access policy to what the calling node may see.",
        "",
        "#### 4.1.2 Functional Definition of AEs",
        "",
        "The events the listener answers (`start_listener`):",
        "",
    ]
    out += _table(["Event", "Handler", "What it does"], [[f"`{e}`", f"`{h}`", d] for e, h, d in net.handled_events()])
    out += [
        "#### 4.1.3 Sequencing of Real-World Activities",
        "",
        "A C-STORE success is answered only after the object is fsynced and indexed. A Modality Worklist "
        "item exists from the CUP booking until the exam is performed.",
        "",
        "### 4.2 AE Specifications",
        "",
        "#### 4.2.1 SOP Classes",
        "",
    ]
    out += _table(
        ["SOP Class", "UID", "Service class", "SCU", "SCP"],
        [
            [
                cx.name,
                f"`{cx.abstract_syntax}`",
                net.SERVICE_CLASSES[cx.service_class][0],
                "Yes" if cx.scu_role else "No",
                "Yes",
            ]
            for cx in contexts
        ],
    )
    dicom_settings = {
        name: (default, comment)
        for name, default, comment in _settings_defaults(("PACS_DICOM_", "PACS_QUERY_", "PACS_QIDO_"))
    }

    def setting(name: str) -> str:
        return f"`{name}` (default {dicom_settings[name][0]})"

    out += [
        "#### 4.2.2 Association Policies",
        "",
        "General: the Application Context Name is `1.2.840.10008.3.1.1.1`; the maximum PDU length received is "
        f"{setting('PACS_DICOM_MAX_PDU')}; a PDU declared longer than {setting('PACS_DICOM_PDU_READ_LIMIT')} "
        "ends the association.",
        "",
        f"Number of associations: at most {setting('PACS_DICOM_MAX_ASSOCIATIONS')} at once, both ports "
        f"together; at most {setting('PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS')} connections from one "
        f"address; a connection must send its A-ASSOCIATE-RQ within {setting('PACS_DICOM_REQUEST_TIMEOUT')} "
        "seconds.",
        "",
        "Asynchronous nature: not supported (one outstanding operation per association; the "
        "Asynchronous Operations Window is not negotiated).",
        "",
        f"Implementation identifying information: Implementation Class UID `{impl.class_uid}`, "
        f"Implementation Version Name `{impl.version_name}`.",
        "",
        "#### 4.2.3 Association Initiation Policy",
        "",
        "The archive initiates an association only for a C-MOVE: to the move destination, a RemoteNode of "
        "the called facility marked as retrieve destination, at its registered host and port, calling with "
        "the called facility's AE title. It proposes each (SOP class, transfer syntax) pair of the instances "
        "to send as archived, and Explicit and Implicit VR Little Endian for each SOP class (at most 128 "
        "contexts). C-GET sends its C-STORE sub-operations on the requesting association, in the roles the "
        "SCU proposed. An instance whose stored transfer syntax the peer did not accept is converted to one "
        "it accepted, in this order: Explicit VR Little Endian, Implicit VR Little Endian, Deflated, then "
        "RLE, JPEG-LS lossless and JPEG 2000 lossless (never lossy on a retrieve); the archived bytes are "
        "not changed. A conversion that fails is one failed sub-operation (0x0110). The archive also "
        "initiates an association to answer a Storage Commitment request on a new association (section "
        "4.2.5), calling with the facility's AE title and proposing the SCP role of Storage Commitment.",
        "",
        "#### 4.2.4 Association Acceptance Policy",
        "",
        "An association is accepted when the called AE title is a facility's and the calling AE title is a "
        "RemoteNode of that facility, calling from one of its addresses, on the TLS port with its own "
        "certificate when it has one (otherwise A-ASSOCIATE-RJ: calling AE title not recognised, or called "
        "AE title not recognised). The rejections:",
        "",
    ]
    out += _table(["Result", "Source", "Reason", "When"], [list(r) for r in net.rejections()])
    out += ["Presentation contexts:", ""]
    # Transfer syntaxes in sets (as PS3.2's examples do): a storage SOP class takes many.
    # (The order within a set does not matter: the requestor's proposal orders them.)
    sets: dict[frozenset[str], str] = {}
    for cx in contexts:
        key = frozenset(cx.transfer_syntaxes)
        if key not in sets:
            sets[key] = f"TS-{len(sets) + 1}"
            out += [f"Transfer syntax set {sets[key]}:", ""]
            out += _table(["Transfer Syntax", "UID"], [[_ts_name(ts), f"`{ts}`"] for ts in cx.transfer_syntaxes])
    rows = [
        [cx.name, f"`{cx.abstract_syntax}`", sets[frozenset(cx.transfer_syntaxes)], cx.role, "None"] for cx in contexts
    ]
    out += _table(["Abstract Syntax", "UID", "Transfer Syntaxes", "Role", "Extended Negotiation"], rows)

    # SOP-specific conformance
    out += ["#### 4.2.5 SOP Specific Conformance", ""]
    services = list(dict.fromkeys(service for cx in contexts for service in cx.services))
    for service in services:
        uses = net.status_table(service)
        out += [f"##### {service}", ""]
        if uses:
            out += _table(
                ["Status", "Code", "Meaning", "When", "Sent by"],
                [[u.kind, f"`{u.hex}`", u.meaning, u.when, u.source] for u in uses],
            )
        else:
            out += ["No archive-specific status is registered for this service (archive/dicomnet/statuses.py).", ""]
        if service == st.STORE:
            out += [
                "Storage: conformance level 2 (full): every element is kept, the object is stored byte for "
                "byte in the transfer syntax received and never transcoded on ingest. A duplicate SOP "
                "Instance UID with identical bytes is a success; with other bytes it is a conflict "
                "(warning) and the archived object is unchanged.",
                "",
            ]
        if service == st.FIND:
            models = net.query_models()
            out += [
                "Information models and levels: "
                + "; ".join(f"{root} root: {', '.join(levels)}" for root, levels in models.items())
                + f". At most {setting('PACS_QUERY_MAX_MATCHES')} "
                "matches are answered. Relational queries are not negotiated; keys of a lower level "
                "match when some object below matches. Keys not listed are returned empty.",
                "",
            ]
            out += _table(
                ["Level", "Keyword", "Tag", "Type", "Matching"],
                [[k.level, k.keyword, k.tag, "U" if k.unique else "R", k.matching] for k in net.query_keys()],
            )
            constants = net.query_constants()
            if constants:
                out += [
                    "Returned with a fixed value: " + ", ".join(f"{k} = {v}" for k, v in constants.items()) + ".",
                    "",
                ]
        if service == st.WORKLIST:
            keys = net.worklist_keys()
            out += ["Modality Worklist keys (the CUP bookings of the called facility, still to be performed):", ""]
            out += _table(
                ["Keyword", "Tag", "In sequence", "Matching"],
                [
                    [
                        k.keyword,
                        net.worklist_key_tag(k),
                        k.sequence or "-",
                        net.MATCHING[k.kind] if k.kind else "return key only",
                    ]
                    for k in keys
                ],
            )
    out += [
        "### 4.3 Network Interfaces",
        "",
        "TCP/IP (IPv4 and IPv6 as the host provides), on the plain port "
        f"{setting('PACS_DICOM_PORT')} and, when a certificate is configured, the TLS port "
        f"{setting('PACS_DICOM_TLS_PORT')} (TLS 1.2 or later, BCP 195; client certificate required).",
        "",
        "### 4.4 Configuration",
        "",
        "AE titles: each facility's `ae_title` (admin). Remote nodes: `RemoteNode` rows per facility, read "
        "at association time (AE title, addresses, rights can_store/can_query/can_retrieve/can_worklist, "
        "retrieve destination, TLS certificate fingerprint). Settings (environment variables):",
        "",
    ]
    out += _table(["Setting", "Default", "Meaning"], [[f"`{n}`", d, c] for n, (d, c) in dicom_settings.items()])

    # --- 5 media
    out += ["## 5 Media Interchange", ""]
    media = _media_profile() if _media_profile is not None else None
    if media is None:
        out += ["No media are written (the portal, which makes the citizen's download, is not installed).", ""]
    else:
        out += [
            "The citizen's download of a study (the portal) is a ZIP of a PS3.10 file-set as a CD of IHE PDI "
            f"holds it: {', '.join(f'`{f}`' for f in media.files)} and the instances under file IDs such as "
            f"`{media.file_id}`, byte for byte as archived (in their stored transfer syntax). The DICOMDIR is "
            f"written in {_ts_name(media.dicomdir_transfer_syntax)}.",
            "",
            "Role: File-set Creator (FSC); the archive does not read media (FSR) nor update them (FSU). The "
            "file-set follows the structure of the general-purpose interchange profiles (PS3.11) without "
            "restricting the transfer syntaxes: a compressed image stays compressed.",
            "",
            "Directory records: PATIENT, STUDY, SERIES, and for each instance the record pydicom's recorders "
            "make for its SOP class: " + ", ".join(media.record_types) + ".",
            "",
        ]

    # --- 6 character sets
    terms = sorted(python_encoding)
    out += [
        "## 6 Support of Character Sets",
        "",
        "Received objects keep their Specific Character Set; the index decodes these terms (single values "
        "and ISO 2022 code extensions): " + ", ".join(f"`{t}`" for t in terms if t) + ".",
        "",
        "A C-FIND answer is written in the character set the query declared when it is one of "
        + ", ".join(f"`{t}`" for t in query.ANSWER_CHARACTER_SETS)
        + " and every answer's text can be encoded in it; otherwise in UTF-8 (`ISO_IR 192`) when a value is "
        "not ASCII. QIDO-RS answers are UTF-8 JSON. Modality Worklist answers add `ISO_IR 192` when a value "
        "is not ASCII.",
        "",
        "Person names (PN: Patient's Name, Referring Physician's Name, and the worklist's Patient's Name) "
        "match without regard to case or accents, as PS3.4 C.2.2.2.1 allows: the query key and the "
        "archived name are compared through the same search key (Unicode NFKD without combining marks, "
        "case-folded, with a table for letters that do not decompose: ł, ø, æ, œ, đ, ð, þ, ı...), with the "
        "wildcards `*` and `?`; see `docs/matching.md`.",
        "",
    ]

    # --- 7 security
    out += [
        "## 7 Security",
        "",
        "- Transport: DICOM TLS (PS3.15 B.9, BCP 195) on its own port, mutual authentication with "
        "certificates signed by the configured CA; a node with a registered certificate must use it.",
        "- Node trust: only registered RemoteNodes of the called facility, from their registered "
        "addresses; `PACS_DICOM_ACCEPT_UNKNOWN_AE` (demo only) lets unknown AEs echo and store, nothing else.",
        "- Access policy: every query and retrieval is limited to the node's scope (its health authority "
        "or facility); a study the patient hid (oscuramento) is never answered.",
        "- Audit: every association refused, store, query, worklist query and retrieval is written to the "
        "audit log (keyed hash chains), with the calling AE, the address and the patients concerned.",
        "",
    ]

    # --- 8 DICOMweb
    out += [
        "## 8 DICOMweb",
        "",
        "Service root `/dicomweb/` (the region) and `/dicomweb/{facility}/` (one facility). Authentication: "
        "an API token (`Authorization: Token` or `Bearer`) or a staff session; the access policy and the "
        "audit apply as for DIMSE. `OPTIONS` on the root or any resource answers the capabilities (PS3.18 "
        "8.9) without authentication: WADL (`application/vnd.sun.wadl+xml`), or JSON with "
        "`Accept: application/json`.",
        "",
    ]
    rows = []
    for r in web.resources():
        for m in r.methods:
            params = [p.name for p in m.params if p.style == "query"]
            shown = ", ".join(params[:8]) + (f" and {len(params) - 8} more" if len(params) > 8 else "")
            rows.append(
                [
                    f"`{r.path}`",
                    m.name,
                    m.transaction,
                    shown or "-",
                    "; ".join(m.accepts) or "-",
                    "; ".join(dict.fromkeys(x.split("; transfer-syntax=")[0] for x in m.produces)),
                ]
            )
    out += _table(["Resource", "Method", "Transaction", "Query parameters", "Accepts", "Produces"], rows)
    out += [
        "QIDO-RS matching keys are those of the C-FIND table (section 4.2.5), by keyword or tag. "
        f"A search without `limit` answers at most {setting('PACS_QIDO_DEFAULT_LIMIT')} results, and a "
        f"larger `limit` than {setting('PACS_QIDO_MAX_LIMIT')} is served as that maximum; when the "
        "archive cut an answer that had more matches, it carries the PS3.18 8.3.4.4 header "
        '`Warning: 299 {host}: "The number of results exceeded the maximum supported by the server. '
        'Additional results can be requested."` and the next page is asked with `offset` (newest study '
        "first, a stable order). A `limit` within the maximum is the client's own page: no Warning. A "
        f"negative or non-numeric `limit` or `offset`, or an `offset` past {setting('PACS_QUERY_MAX_OFFSET')}, "
        "is refused with 400. "
        "WADO-RS sends instances in their stored transfer syntax (no `transfer-syntax`, `*` or the stored "
        "one) or converted to the one asked (Explicit VR Little Endian and the lossless syntaxes above; "
        "lossy ones only when named); frames as `application/octet-stream` are uncompressed unless "
        "`transfer-syntax=*`; metadata carries Transfer Syntax UID (0002,0010) and Instance Availability "
        "(0008,0056: ONLINE, or NEARLINE when only the long-term tier holds the object). STOW-RS answers "
        "in JSON or, on `Accept: application/dicom+xml`, in the Native DICOM Model; an object held aside as "
        "a conflict is in the Failed SOP Sequence with Failure Reason 0xA7C0.",
        "",
    ]
    return "\n".join(out).rstrip() + "\n"


def statement_write(path: Path | None = None) -> Path:
    """Write the statement (default: docs/DICOM_CONFORMANCE.md of the checkout)."""
    target = path or Path(settings.BASE_DIR) / OUTPUT
    target.write_text(statement(), encoding="utf-8")
    return target
