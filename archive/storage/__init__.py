"""Storage: the tiers and the one way to their files (``tiers``), which copy to read
(``retrieve``), moving copies between tiers and checking them (``lifecycle``), the
admin's storage pages (``admin``).

May import the index (``archive.models``, ``access``; ``admin`` builds on
``archive.admin``) and the kernel, no other room. ``tiers`` imports nothing of the
archive. No re-exports: callers import the module they use.
"""
