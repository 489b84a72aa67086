"""The Native DICOM Model (PS3.19 A.1): a data set as XML, for ``application/dicom+xml`` answers.

pydicom writes DICOM JSON but not this model, so the few answers that offer it
(the STOW-RS response, PS3.18 10.5.3) are serialised here with the standard
library's ElementTree, which escapes text and attributes. The rules kept:

* root ``NativeDicomModel`` in the namespace
  ``http://dicom.nema.org/PS3.19/models/NativeDICOM``, with ``xml:space="preserve"``
  (Table A.1.5-1 requires the directive);
* one ``DicomAttribute`` per element in tag order, ``tag`` as eight upper-case hex
  digits, ``vr``, ``keyword`` (public elements), ``privateCreator`` (private ones);
  group lengths (gggg,0000) are left out (A.1.5);
* values as ``Value number="n"`` (1-based, one per value of a multi-valued
  element; an empty element has no child), sequence items as ``Item number="n"``,
  person names as ``PersonName number="n"`` with ``Alphabetic``, ``Ideographic``
  and ``Phonetic`` groups of ``FamilyName``, ``GivenName``, ``MiddleName``,
  ``NamePrefix``, ``NameSuffix``; AT values as ``ggggeeee``; binary values
  (OB, OW, OF, OD, OL, OV, UN) as ``InlineBinary`` in base64;
* padding removed (A.1.5: the recipient pads again); characters XML 1.0 cannot
  carry (control characters other than tab, LF, CR) become U+FFFD.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

NATIVE_DICOM_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW"})
_NAME_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
# XML 1.0 section 2.2: the characters a document may hold.
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _q(name: str) -> str:
    # Unqualified: the root declares the default namespace (ElementTree's default_namespace
    # option refuses unqualified attribute names, which every DicomAttribute has).
    return name


def _text(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def dataset_to_native_xml(ds: Dataset) -> bytes:
    """``ds`` as a Native DICOM Model document, UTF-8 with its XML declaration."""
    root = ET.Element(_q("NativeDicomModel"))
    root.set("xmlns", NATIVE_DICOM_NS)
    root.set(_XML_SPACE, "preserve")
    _attributes(root, ds)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _attributes(parent: ET.Element, ds: Dataset) -> None:
    for element in sorted(ds, key=lambda e: int(e.tag)):
        if element.tag.element == 0:
            continue  # group length (A.1.5)
        _attribute(parent, ds, element)


def _attribute(parent: ET.Element, ds: Dataset, element: DataElement) -> None:
    node = ET.SubElement(parent, _q("DicomAttribute"))
    node.set("tag", f"{int(element.tag):08X}")
    vr = str(element.VR)
    if vr in ("OB or OW", "US or OW"):
        vr = "OW"
    elif vr == "US or SS":
        vr = "US"
    node.set("vr", vr)
    if element.tag.is_private:
        creator = _private_creator(ds, element)
        if creator:
            node.set("privateCreator", creator)
    else:
        keyword = keyword_for_tag(element.tag)
        if keyword:
            node.set("keyword", keyword)
    if element.is_empty:
        return
    if vr == "SQ":
        for n, item in enumerate(element.value, start=1):
            child = ET.SubElement(node, _q("Item"), number=str(n))
            _attributes(child, item)
        return
    if vr in _BINARY_VRS:
        data = element.value if isinstance(element.value, bytes | bytearray) else bytes(element.value)
        ET.SubElement(node, _q("InlineBinary")).text = base64.b64encode(data).decode("ascii")
        return
    values = list(element.value) if element.VM > 1 else [element.value]
    for n, value in enumerate(values, start=1):
        if vr == "PN":
            _person_name(node, n, value)
            continue
        child = ET.SubElement(node, _q("Value"), number=str(n))
        if value is None or value == "":
            continue
        if vr == "AT":
            child.text = f"{int(value):08X}"
        else:
            child.text = _text(value).rstrip(" \x00") if isinstance(value, str) else _text(value)


def _person_name(node: ET.Element, n: int, value: Any) -> None:
    name = ET.SubElement(node, _q("PersonName"), number=str(n))
    if value is None or str(value) == "":
        return
    groups = str(value if isinstance(value, PersonName) else PersonName(value)).split("=")
    for group_name, group in zip(_NAME_GROUPS, groups, strict=False):
        if not group:
            continue
        group_node = ET.SubElement(name, _q(group_name))
        for part_name, part in zip(_NAME_PARTS, group.split("^"), strict=False):
            if part:
                ET.SubElement(group_node, _q(part_name)).text = _text(part)


def _private_creator(ds: Dataset, element: DataElement) -> str:
    tag = element.tag
    if tag.is_private_creator:
        return ""
    creator_tag = (tag.group << 16) | (tag.element >> 8)
    creator = ds.get(creator_tag)
    return str(creator.value) if creator is not None and creator.value else ""
