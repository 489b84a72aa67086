"""Reporting: the rules of a report's life (``services``), its signature and
verification (``signing``), its PDF (``pdf``), the radiologist's pages (``views``,
``forms``, ``urls``).

May import the index, ``archive.storage``, ``archive.rendering`` (the pages' images)
and the kernel. ``signing`` and ``pdf`` import nothing of the archive (preservation
uses ``signing``). No re-exports: callers import the module they use.
"""
