"""The DICOM network: the listener, its transport, the nodes it trusts, and the fence around pynetdicom's internals."""
