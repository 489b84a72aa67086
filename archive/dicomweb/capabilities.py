"""DICOMweb's capabilities (PS3.18 8.9): what ``OPTIONS`` answers, on the service
root and on each resource, and what the conformance statement lists.

Built from the code, never from a list of its own: the resources and their
methods are the URL patterns of :mod:`archive.dicomweb.urls` and the handler
methods of their views; the search keys are the matching engine's
(:data:`archive.query.ATTRIBUTES`) and QIDO-RS's control parameters
(:data:`archive.dicomweb.qido._QIDO_CONTROL`) and default return keys; the
media types are :mod:`archive.dicomweb.media`'s, the frames' table
(:data:`archive.dicomweb.wado.FRAME_MEDIA_TYPES`) and the renderer's. What a
view does with a method is said once, in :func:`_method`, keyed by the view
class; a view it does not know raises ``KeyError`` (a new view cannot be
left out of the capabilities).

The answer is a WADL document (``application/vnd.sun.wadl+xml``, which PS3.18
specifies) or, asked with ``Accept: application/json``, the same content as
JSON. It describes the service, never data: no study, patient or facility is
named, which is why ``OPTIONS`` is answered without authentication (as a
browser's CORS preflight must be) and is not audited.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from django.http import HttpResponse

from archive import query
from archive.dicom import ACCEPTED_TRANSFER_SYNTAXES
from archive.rendering import pipeline as rendering

from .media import DICOM, DICOM_JSON, MULTIPART, OCTET_STREAM, error_body, parse_accept
from .qido import _QIDO_CONTROL, QIDO_DEFAULTS
from .wado import FRAME_MEDIA_TYPES

WADL = "application/vnd.sun.wadl+xml"
WADL_NS = "http://wadl.dev.java.net/2009/02"
JSON = "application/json"
_HANDLERS = ("get", "post", "put", "delete", "patch")

# What each QIDO-RS control parameter takes (its values are checked in qido.py).
_CONTROL_TYPES = {
    "includefield": ("xs:string", True, "attribute keywords or tags, comma-separated, or all"),
    "limit": ("xs:nonNegativeInteger", False, "default PACS_QIDO_DEFAULT_LIMIT, at most PACS_QIDO_MAX_LIMIT results"),
    "offset": ("xs:nonNegativeInteger", False, "at most PACS_QUERY_MAX_OFFSET"),
    "fuzzymatching": ("xs:boolean", False, "true: person names and text keys match any part, any case"),
    "accept": ("xs:string", True, "overrides the Accept header (PS3.18 8.3.3.1)"),
    "charset": ("xs:string", False, "accepted; answers are UTF-8"),
    "format": ("xs:string", False, "accepted and ignored"),
}
# The rendered resources' parameters (parsed in rendered.py) and WADO-URI's (wado_uri.py).
_RENDER_PARAMS = {
    "quality": ("xs:integer", "1 to 100 (JPEG)"),
    "window": ("xs:string", "center,width[,linear|linear-exact|sigmoid]"),
    "viewport": ("xs:string", "vw,vh[,sx,sy,sw,sh]"),
}
_WADO_URI_PARAMS = {
    "requestType": ("xs:string", "WADO", True),
    "studyUID": ("xs:string", "", True),
    "seriesUID": ("xs:string", "", True),
    "objectUID": ("xs:string", "", True),
    "contentType": ("xs:string", "application/dicom, image/jpeg (default), image/png", False),
    "transferSyntax": ("xs:string", "the stored one only (no transcoding)", False),
    "frameNumber": ("xs:positiveInteger", "", False),
    "imageQuality": ("xs:integer", "1 to 100", False),
    "windowCenter": ("xs:decimal", "with windowWidth", False),
    "windowWidth": ("xs:decimal", "with windowCenter", False),
    "rows": ("xs:positiveInteger", "", False),
    "columns": ("xs:positiveInteger", "", False),
}
# The XML Schema type of each kind of matching key (archive.query).
_KEY_TYPES = {
    query.TEXT: "xs:string",
    query.PN: "xs:string",
    query.UID: "xs:string",
    query.DATE: "xs:string",
    query.TIME: "xs:string",
    query.INT: "xs:integer",
    query.MULTI: "xs:string",
}


@dataclass(frozen=True)
class Param:
    name: str
    style: str  # "template" (in the path) or "query"
    type: str = "xs:string"
    repeating: bool = False
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Method:
    name: str  # GET, POST
    transaction: str  # PS3.18's name for it
    params: tuple[Param, ...] = ()
    accepts: tuple[str, ...] = ()  # request bodies
    produces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resource:
    path: str  # relative to the service root, {name} for template parameters
    route: str  # the Django route, as urls.py writes it
    view: str
    methods: tuple[Method, ...] = field(default_factory=tuple)

    @property
    def allow(self) -> list[str]:
        """The Allow header: the handlers, HEAD with GET (Django), OPTIONS."""
        names = [m.name for m in self.methods]
        if "GET" in names:
            names.insert(names.index("GET") + 1, "HEAD")
        return [*names, "OPTIONS"]


def _template(route: str) -> tuple[str, tuple[Param, ...]]:
    params = tuple(
        Param(name, "template", required=True, doc="frame numbers, comma-separated" if name == "frames" else "")
        for name in re.findall(r"<(?:\w+:)?(\w+)>", route)
    )
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route), params


def _qido_params(level: str) -> tuple[Param, ...]:
    """A search's query parameters: the matching keys of its level and of the levels
    around it (archive.query matches both), then the control parameters."""
    keys = [
        Param(
            a.keyword,
            "query",
            _KEY_TYPES[a.kind],
            doc=f"matching: {_MATCHING_DOC[a.kind]}"
            + ("; default return key" if a.keyword in QIDO_DEFAULTS[level] else ""),
        )
        for a in query.ATTRIBUTES.values()
        if a.kind != query.COUNT
    ]
    controls = [
        Param(name, "query", _CONTROL_TYPES[name][0], repeating=_CONTROL_TYPES[name][1], doc=_CONTROL_TYPES[name][2])
        for name in sorted(_QIDO_CONTROL)
    ]
    return (*keys, *controls)


# Short words for the WADL's doc of each matching kind.
_MATCHING_DOC = {
    query.TEXT: "single value, wildcard, list",
    query.PN: "single value (case-insensitive), wildcard",
    query.UID: "single value, list (comma or backslash)",
    query.DATE: "single value, range",
    query.TIME: "single value, range",
    query.INT: "single value",
    query.MULTI: "any of the values, wildcard",
}

_ACCEPT = Param("accept", "query", repeating=True, doc="overrides the Accept header (PS3.18 8.3.3.1)")
_STORED_DICOM = tuple(f'{MULTIPART}; type="{DICOM}"; transfer-syntax={ts}' for ts in ACCEPTED_TRANSFER_SYNTAXES)
_FRAMES = (
    f'{MULTIPART}; type="{OCTET_STREAM}"',
    *dict.fromkeys(f'{MULTIPART}; type="{t}"' for t in FRAME_MEDIA_TYPES.values()),
)
_RENDERED = (rendering.JPEG, rendering.PNG)


def _render_params() -> tuple[Param, ...]:
    return tuple(Param(n, "query", t, doc=d) for n, (t, d) in _RENDER_PARAMS.items()) + (_ACCEPT,)


def _method(view: type, name: str, route: str) -> Method:
    """What ``view`` does with ``name`` (GET, POST) at ``route``."""
    from . import views

    if name == "POST" and view in (views.StudiesView, views.StudyView):
        return Method(
            "POST",
            "STOW-RS Store Instances",
            accepts=(f'{MULTIPART}; type="{DICOM}"',),
            produces=(DICOM_JSON,),
        )
    level = "STUDY" if view is views.StudiesView else view.level if issubclass(view, views.SearchView) else None
    if level is not None:
        return Method(
            "GET",
            {"STUDY": "QIDO-RS Search for Studies", "SERIES": "QIDO-RS Search for Series"}.get(
                level, "QIDO-RS Search for Instances"
            ),
            params=(*_qido_params(level),),
            produces=(DICOM_JSON, JSON),
        )
    if view in (views.StudyView, views.SeriesView, views.InstanceView):
        return Method("GET", "WADO-RS Retrieve Instances", params=(_ACCEPT,), produces=_STORED_DICOM)
    if view is views.MetadataView:
        return Method("GET", "WADO-RS Retrieve Metadata", params=(_ACCEPT,), produces=(DICOM_JSON, JSON))
    if view is views.FramesView:
        return Method("GET", "WADO-RS Retrieve Frames", params=(_ACCEPT,), produces=_FRAMES)
    if view is views.BulkdataView:
        return Method(
            "GET", "WADO-RS Retrieve Bulkdata", params=(_ACCEPT,), produces=(f'{MULTIPART}; type="{OCTET_STREAM}"',)
        )
    if view is views.ThumbnailView:
        return Method("GET", "WADO-RS Retrieve Thumbnail", params=_render_params(), produces=_RENDERED)
    if view is views.RenderedView:
        many = "/instances/" not in route
        produced = tuple(f'{MULTIPART}; type="{t}"' for t in _RENDERED) if many else _RENDERED
        return Method("GET", "WADO-RS Retrieve Rendered", params=_render_params(), produces=produced)
    if view is views.WadoUriView:
        params = tuple(Param(n, "query", t, required=r, doc=d) for n, (t, d, r) in _WADO_URI_PARAMS.items())
        return Method("GET", "WADO-URI", params=params, produces=(DICOM, *_RENDERED))
    raise KeyError(f"{view.__name__} {name}: the capabilities do not describe this view")


def resources() -> list[Resource]:
    """Every resource under the service root, with what each method does."""
    from .urls import _resources

    found = []
    for pattern in _resources:
        route = str(pattern.pattern)
        if not route:
            continue  # the service root: OPTIONS only (this document)
        view = pattern.callback.view_class  # type: ignore[attr-defined]  # as_view() sets it
        path, template = _template(route)
        methods = []
        for handler in _HANDLERS:
            if hasattr(view, handler):
                method = _method(view, handler.upper(), route)
                methods.append(
                    Method(method.name, method.transaction, template + method.params, method.accepts, method.produces)
                )
        found.append(Resource(path=path, route=route, view=view.__name__, methods=tuple(methods)))
    return found


def _resources_for(route: str | None) -> list[Resource]:
    every = resources()
    if route is None:
        return every
    return [r for r in every if r.route == route]


# --- the documents ------------------------------------------------------------------------------


def capabilities_json(base: str, route: str | None = None) -> dict[str, Any]:
    """The capabilities as JSON: the WADL's content, one object per resource."""
    return {
        "base": base,
        "facilityRoot": base.rstrip("/") + "/{facility}/",
        "resources": [{**asdict(r), "allow": r.allow} for r in _resources_for(route)],
    }


def capabilities_wadl(base: str, route: str | None = None) -> bytes:
    """The capabilities as a WADL document (PS3.18 8.9)."""
    ET.register_namespace("", WADL_NS)
    q = f"{{{WADL_NS}}}"
    app = ET.Element(q + "application")
    doc = ET.SubElement(app, q + "doc", {"title": "DICOMweb (PS3.18)"})
    doc.text = (
        "The same resources are served under each facility's root, {facility}/ after the base. "
        "Authentication: a DRF API token (Authorization: Token or Bearer) or a staff session."
    )
    root = ET.SubElement(app, q + "resources", {"base": base})
    for resource in _resources_for(route):
        res = ET.SubElement(root, q + "resource", {"path": resource.path})
        for method in resource.methods:
            m = ET.SubElement(res, q + "method", {"name": method.name, "id": f"{resource.view}.{method.name}"})
            ET.SubElement(m, q + "doc").text = method.transaction
            request = ET.SubElement(m, q + "request")
            for p in method.params:
                attrs = {"name": p.name, "style": p.style, "type": p.type}
                if p.repeating:
                    attrs["repeating"] = "true"
                if p.required:
                    attrs["required"] = "true"
                param = ET.SubElement(request, q + "param", attrs)
                if p.doc:
                    ET.SubElement(param, q + "doc").text = p.doc
            for media in method.accepts:
                ET.SubElement(request, q + "representation", {"mediaType": media})
            response = ET.SubElement(m, q + "response", {"status": "200"})
            for media in method.produces:
                ET.SubElement(response, q + "representation", {"mediaType": media})
    return ET.tostring(app, encoding="utf-8", xml_declaration=True)


def capabilities_response(*, base: str, accept: str | None, route: str | None = None) -> HttpResponse:
    """The OPTIONS answer: WADL unless JSON is preferred; 406 for neither."""
    kind = None
    for r in parse_accept(accept):
        if r.type in (WADL, "application/xml", "text/xml", "application/*", "*/*", "*"):
            kind = WADL
        elif r.type in (JSON, DICOM_JSON):
            kind = JSON
        if kind:
            break
    if kind is None:
        # Answered here, not raised: a DicomwebError would be audited, and OPTIONS touches no data.
        return HttpResponse(
            error_body(f"the capabilities are served as {WADL} or {JSON}"), status=406, content_type=JSON
        )
    if kind == JSON:
        response = HttpResponse(json.dumps(capabilities_json(base, route), indent=1), content_type=JSON)
    else:
        response = HttpResponse(capabilities_wadl(base, route), content_type=WADL)
    return response  # DRF adds the Allow header: the view's methods


def resource_route(full_route: str) -> str | None:
    """The route of :mod:`archive.dicomweb.urls` a request matched, without the service
    root and facility prefix; None for the service root itself (every resource)."""
    route = full_route.split("dicomweb/", 1)[-1]
    route = route.removeprefix("<facility:facility>/")
    return route or None
