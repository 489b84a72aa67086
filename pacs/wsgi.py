from __future__ import annotations

import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

application = get_wsgi_application()

# What start-up loaded (Django, pydicom, the URL conf) lives as long as the
# process: kept out of the collector's full passes, which otherwise walk it
# all whenever a request allocates a lot (a QIDO-RS answer of hundreds of
# studies) and add tens of milliseconds to that request.
gc.freeze()
