"""Publication of the signed reports to the national FSE 2.0 gateway, through an outbox.

The app ``portal`` is the citizen's own pages; this one sends each signed
version, as the gateway receives documents (a PDF/A-3 with the CDA attached),
and the study's KOS manifest beside it. See :mod:`fse_gateway.outbox`.
"""
