"""The DICOM Conformance Statement (docs/DICOM_CONFORMANCE.md) and DICOMweb's capabilities
say what the code does: the statement is what the generator writes now, its
presentation contexts are exactly what the running listener accepts (with the
roles), and the WADL lists exactly the routes and methods of archive/dicomweb/urls.py."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from django.conf import settings
from django.test import Client
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role

from archive import conformance, query
from archive.dicomnet import conformance as net
from archive.dicomnet import listener as listener_module
from archive.dicomnet import statuses
from archive.dicomweb import capabilities, qido, rendered, urls, wado_uri
from kernel.models import AuditEvent

STATEMENT = Path(settings.BASE_DIR) / "docs" / "DICOM_CONFORMANCE.md"
CALLING, CALLED = "STORESCU", "TSCAT_PACS"  # a node of TS-CAT in the region fixture
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1-255


# --- (a) the file is what the code says ---------------------------------------------------------


def test_the_statement_is_what_the_code_says() -> None:
    expected = conformance.statement()
    written = STATEMENT.read_text(encoding="utf-8") if STATEMENT.exists() else ""
    assert written == expected, (
        "docs/DICOM_CONFORMANCE.md differs from what the code says: "
        "run `python manage.py conformance_statement` and commit the file"
    )


def test_the_statement_has_the_parts_of_ps3_2() -> None:
    text = conformance.statement()
    for heading in (
        "## 1 Conformance Statement Overview",
        "## 2 Table of Contents",
        "## 3 Introduction",
        "#### 4.2.2 Association Policies",
        "#### 4.2.3 Association Initiation Policy",
        "#### 4.2.4 Association Acceptance Policy",
        "#### 4.2.5 SOP Specific Conformance",
        "## 5 Media Interchange",
        "## 6 Support of Character Sets",
        "## 7 Security",
        "## 8 DICOMweb",
    ):
        assert heading in text
    impl = net.implementation()
    assert impl.class_uid in text and impl.version_name in text
    # The settings' defaults, not this machine's environment.
    assert "`PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS` (default 8)" in text
    for keyword in query.ATTRIBUTES:
        assert f"| {keyword} |" in text
    for key in net.worklist_keys():
        assert f"| {key.keyword} |" in text
    assert "ScheduledProcedureStepStartTime" in text  # the worklist source is registered (booking)


def test_every_status_the_listener_answers_is_in_the_table() -> None:
    """The handlers answer through names of archive/dicomnet/statuses.py, each listed in STATUSES."""
    source = inspect.getsource(listener_module)
    assert not re.search(r"_status\(0x", source), "a status literal in the listener: add it to statuses.py"
    named = set(re.findall(r"_status\(\s*([A-Z_]+)\s*[,)]", source))
    assert {"SUCCESS", "NOT_AUTHORIZED", "CANCEL"} <= named
    codes = {s.code for s in statuses.STATUSES}
    for name in named:
        assert getattr(statuses, name) in codes, name
    for code in listener_module.DIMSE_STATUS.values():
        assert code in codes


# --- (b) the presentation contexts are what the listener negotiates ---------------------------------


def _chunks(items: list, size: int = MAX_CONTEXTS) -> Iterator[list]:  # type: ignore[type-arg]
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _negotiate(port: int, proposals: list[tuple[str, list[str]]], roles: set[str]) -> list:  # type: ignore[type-arg]
    """Propose ``proposals`` (abstract syntax, transfer syntaxes), SCP/SCU role selection
    for the abstract syntaxes in ``roles``, 128 contexts per association; the accepted contexts."""
    accepted = []
    for chunk in _chunks(proposals):
        ae = AE(ae_title=CALLING)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        contexts = [build_context(uid, syntaxes) for uid, syntaxes in chunk]
        ext_neg = [
            build_role(uid, scu_role=True, scp_role=True) for uid in dict.fromkeys(u for u, _ in chunk) if uid in roles
        ]
        assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title=CALLED, ext_neg=ext_neg)
        if not assoc.is_established:
            # An association whose every context is refused is rejected or aborted: nothing accepted.
            continue
        try:
            accepted += list(assoc.accepted_contexts)
        finally:
            assoc.release()
    return accepted


def test_the_listener_accepts_exactly_the_statements_contexts(listener: int) -> None:
    contexts = net.presentation_contexts()
    stated = {(cx.abstract_syntax, ts) for cx in contexts for ts in cx.transfer_syntaxes}
    with_roles = {cx.abstract_syntax for cx in contexts if cx.scu_role and cx.scp_role}
    # The statement's tables say what the generator read: the same contexts, printed.
    text = STATEMENT.read_text(encoding="utf-8")
    for cx in contexts:
        assert re.search(rf"\| `{re.escape(cx.abstract_syntax)}` \| TS-\d+ \| {re.escape(cx.role)} \|", text), cx.name

    # Every (abstract syntax, transfer syntax) of the statement, one per context: all accepted, in their roles.
    accepted = _negotiate(listener, [(a, [t]) for a, t in sorted(stated)], with_roles)
    got = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in accepted}
    assert got == stated
    for cx in accepted:
        uid = str(cx.abstract_syntax)
        # The requestor's view: as SCU always; as SCP (the archive as SCU, C-GET's C-STOREs) with role selection.
        assert cx.as_scu, uid
        assert bool(cx.as_scp) == (uid in with_roles), uid

    # What the statement does not list is refused: every other SOP class pydicom knows, an
    # unknown one, and every other transfer syntax of the listed ones (a made-up one too).
    known_ts = [uid for uid, entry in UID_dictionary.items() if entry[1] == "Transfer Syntax"]
    listed = {cx.abstract_syntax for cx in contexts}
    others = [uid for uid, entry in UID_dictionary.items() if entry[1] == "SOP Class" and uid not in listed]
    refused = [(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for uid in sorted(others)]
    refused.append(("1.2.826.0.1.3680043.10.999.1.2.3", [ExplicitVRLittleEndian]))
    for cx in contexts:
        unlisted = [ts for ts in known_ts if ts not in cx.transfer_syntaxes]
        refused.append((cx.abstract_syntax, [*unlisted, "1.2.826.0.1.3680043.10.999.2"]))
    assert len(others) > 50
    leaked = _negotiate(listener, refused, set())
    assert [(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in leaked] == []
    # A made-up transfer syntax beside a listed one: the listed one is taken.
    (cx,) = _negotiate(listener, [(CTImageStorage, ["1.2.826.0.1.3680043.10.999.2", ExplicitVRLittleEndian])], set())
    assert cx.transfer_syntax[0] == ExplicitVRLittleEndian


# --- DICOMweb: OPTIONS and the WADL ---------------------------------------------------------------------

W = f"{{{capabilities.WADL_NS}}}"


def _handlers(view: type) -> set[str]:
    return {m.upper() for m in ("get", "post", "put", "delete", "patch") if hasattr(view, m)}


@pytest.mark.django_db
def test_options_on_the_service_root_answers_the_wadl_of_every_route() -> None:
    response = Client().options("/dicomweb/")
    assert response.status_code == 200
    assert response["Content-Type"] == capabilities.WADL
    root = ET.fromstring(response.content)
    assert root.tag == W + "application"
    (resources,) = root.findall(W + "resources")
    assert resources.get("base") == "http://testserver/dicomweb/"
    described = {r.get("path"): {m.get("name") for m in r.findall(W + "method")} for r in resources}
    expected = {}
    for pattern in urls._resources:
        route = str(pattern.pattern)
        if route:
            expected[re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)] = _handlers(pattern.callback.view_class)
    assert described == expected
    # Every method says what it produces; the path parameters are template parameters.
    for resource in resources:
        for name in re.findall(r"{(\w+)}", resource.get("path")):
            for method in resource.findall(W + "method"):
                assert method.find(f"{W}request/{W}param[@name='{name}'][@style='template']") is not None
        for method in resource.findall(W + "method"):
            assert method.findall(f"{W}response/{W}representation"), resource.get("path")
    # No access was needed, none was audited.
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_qido_parameters_are_the_matching_engines_keys() -> None:
    root = ET.fromstring(Client().options("/dicomweb/studies").content)
    (method,) = [m for m in root.iter(W + "method") if m.get("name") == "GET"]
    params = {p.get("name") for p in method.iter(W + "param")}
    keys = {kw for kw, attr in query.ATTRIBUTES.items() if attr.kind != query.COUNT}
    assert keys | {"includefield", "limit", "offset", "fuzzymatching"} <= params
    assert params - keys == set(qido._QIDO_CONTROL)


def test_declared_parameters_are_read_by_their_modules() -> None:
    """The rendered and WADO-URI parameters the capabilities list are the ones the code reads."""
    for name in capabilities._RENDER_PARAMS:
        assert f'"{name}"' in inspect.getsource(rendered), name
    for name in capabilities._WADO_URI_PARAMS:
        assert f'"{name}"' in inspect.getsource(wado_uri), name


@pytest.mark.django_db
def test_options_on_a_resource_lists_its_methods_and_json_is_available() -> None:
    client = Client()
    response = client.options("/dicomweb/TS-CAT/studies", HTTP_ACCEPT="application/json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert set(response["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "POST"}
    body = json.loads(response.content)
    assert body["base"] == "http://testserver/dicomweb/TS-CAT/"
    (resource,) = body["resources"]
    assert resource["path"] == "studies"
    assert {m["transaction"] for m in resource["methods"]} == {"QIDO-RS Search for Studies", "STOW-RS Store Instances"}
    frames = client.options("/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1")
    assert frames.status_code == 200 and set(frames["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    (only,) = ET.fromstring(frames.content).iter(W + "resource")
    assert only.get("path").endswith("frames/{frames}")
    assert client.options("/dicomweb/", HTTP_ACCEPT="image/png").status_code == 406
    # The rest of the service still needs a token or a session.
    assert client.get("/dicomweb/studies").status_code == 401
    assert client.get("/dicomweb/").status_code in (401, 403)


@pytest.mark.skipif(shutil.which("findscu") is None, reason="DCMTK is not installed")
def test_dcmtk_findscu_gets_a_context_of_the_statement(listener: int) -> None:
    """DCMTK as the peer: findscu's Study Root FIND is accepted with a transfer syntax the statement lists."""
    study_root_find = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND

    env = {**os.environ, "TCP_NODELAY": "1"}
    command = ["findscu", "-d", "-S", "-aet", "VIEWER", "-aec", CALLED, "-k", "QueryRetrieveLevel=STUDY"]
    done = subprocess.run([*command, "127.0.0.1", str(listener)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    accepted = re.findall(
        r"Context ID:\s+\d+ \(Accepted\).*?Abstract Syntax: =(\S+).*?Accepted Transfer Syntax: =(\S+)", output, re.S
    )
    assert accepted, output
    (cx,) = [c for c in net.presentation_contexts() if c.abstract_syntax == study_root_find]
    dcmtk_names = {
        "LittleEndianExplicit": ExplicitVRLittleEndian,
        "LittleEndianImplicit": ImplicitVRLittleEndian,
        "BigEndianExplicit": "1.2.840.10008.1.2.2",
    }
    for _abstract, ts in accepted:
        assert dcmtk_names[ts] in cx.transfer_syntaxes


def test_options_is_the_same_for_a_study_that_exists_or_not(region, ct_study: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """The capabilities name no data: OPTIONS cannot tell whether a study exists."""
    from tests.dicomweb_helpers import ingest_files, uids

    ingest_files(ct_study[:1], region.facility)
    study, series, _ = uids(ct_study[0])
    client = Client()
    for template in ("/dicomweb/studies/{}", "/dicomweb/studies/{}/series", "/dicomweb/TS-CAT/studies/{}/metadata"):
        known = client.options(template.format(study))
        unknown = client.options(template.format("1.2.826.0.1.3680043.10.999.9"))
        assert known.status_code == unknown.status_code == 200
        assert known.content == unknown.content and study.encode() not in known.content
    assert not AuditEvent.objects.filter(action__startswith="dicomweb").exists()
