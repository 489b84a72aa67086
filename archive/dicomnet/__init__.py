"""The DICOM network: the listener and its handlers (``listener``), the transport
gate in front of pynetdicom (``transport``), who a peer is and how it may connect
(``peers``), the admin's form for a remote node (``forms``).

May import the index (``archive.models``, ``ingest``, ``query``, ``access``, ``dicom``),
``archive.storage`` and the kernel. ``peers`` and ``transport`` import nothing of the
archive: ``archive.models`` uses ``peers`` to check a node's addresses.
No re-exports: callers import the module they use.
"""
