"""The kernel: what every app uses and is not about images. The audit log
(``audit``, its rows in ``models``), the hash chain it and the preservation's
giornale are built on (``hashchain``), the abstract alert of the storage and
the preservation checks (``alerts``, its acknowledge action in ``admin``), the
heartbeat lease of a row a worker builds (``leases``), the codice fiscale
(``codice_fiscale``), the small pieces of every web edge (``web``), the wire
name of every Celery task (``tasknames``), the one error base (``errors``) and
its HTTP edge, RFC 9457 problems for every REST API (``problems``).

It imports Django, DRF and libraries only, never archive, booking, portal or
preservation: what it needs to know of them is given to it (a model named by
reference, a seal source registered at start-up).
"""
