"""DICOMweb (DICOM PS3.18): QIDO-RS, WADO-RS, WADO-URI and STOW-RS under ``/dicomweb/``.

``views`` holds the DRF views, thin adapters that translate HTTP to the
service functions of the other modules and back, and ``urls`` their addresses;
the other modules have no views:

* ``media``: media types, Accept parsing, ``DicomwebError``, JSON bodies;
* ``multipart``: the multipart/related writer, file chunks, ``Streamed`` bodies;
* ``scope``: a service root (``Scope``), UID checks, the instances a URL names, opening them;
* ``wado``: WADO-RS instances, metadata, bulk data and frames, reading stored files;
* ``rendered``: rendered resources and thumbnails;
* ``wado_uri``: WADO-URI;
* ``stow``: STOW-RS, from the spooled request body to the response;
* ``qido``: QIDO-RS searches.

Each module imports only modules above it in this list (``views`` imports
them all). A name with a leading underscore is private to the package: a
sibling module may import it by name, nothing outside the package does.
Nothing is re-exported here: import from the module that defines a name.
"""
