"""The DICOM network: the listener and its handlers (``listener``), the transport
gate in front of pynetdicom (``transport``), every use of pynetdicom's internals with
its table (``fence``, checked at start-up), who a peer is and how it may connect
(``peers``), the admin's form for a remote node (``forms``).

May import the index (``archive.models``, ``ingest``, ``query``, ``access``, ``dicom``),
``archive.storage`` and the kernel. ``peers``, ``transport`` and ``fence`` import nothing of the
archive: ``archive.models`` uses ``peers`` to check a node's addresses.
No re-exports: callers import the module they use.
"""
