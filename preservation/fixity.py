"""The preservation fixity audit: placeholder until step 7."""

from __future__ import annotations
