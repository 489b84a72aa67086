"""Rendering: pixels to JPEG/PNG (``pipeline``), run in worker processes a bad
decoder cannot take down (``isolated``), and the previews and thumbnails stored after
ingestion (``previews``).

May import the index (``archive.models``) and ``archive.storage``. ``pipeline`` imports
nothing of the archive. No re-exports: callers import the module they use.
"""
