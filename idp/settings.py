"""Settings of the IdP di prova's process: the project's, with the IdP's URLs,
its own cookies and cache, and a Content-Security-Policy that lets its consent
form redirect to the portal.

Environment (all optional):

- ``IDP_ISSUER``: its public address, the ``iss`` of its tokens
  (default ``http://127.0.0.1:8001``, from ``IDP_HOST`` and ``IDP_PORT``).
- ``IDP_CLIENT_ID``: the portal's client id (default ``fse-pacs-demo``); its
  secret is generated under ``PACS_VAR_DIR/idp/`` (:mod:`idp.keys`).
- ``IDP_REDIRECT_URIS``: the portal's callback addresses, comma-separated
  (default the portal of ``make run`` on ``WEB_HOST``/``WEB_PORT``, as
  127.0.0.1 and as localhost).
"""

from __future__ import annotations

from csp.constants import SELF

from pacs.settings import *  # noqa: F403  (the project's settings, changed below)
from pacs.settings import CONTENT_SECURITY_POLICY, INSTALLED_APPS, _origin, env_list, env_str

ROOT_URLCONF = "idp.urls"
WSGI_APPLICATION = "idp.wsgi.application"
# The project's apps (the patient registry is theirs) and middleware, less the
# citizen's session clock. The IdP keeps nothing in a session: its pages carry
# the authorization request from one step to the next (idp.views). Cookies
# are not kept apart by port, so its cookies have names of their own: the
# portal's session and CSRF cookies, on the same host, must not be overwritten.
INSTALLED_APPS = [*INSTALLED_APPS, "idp"]
MIDDLEWARE = [m for m in MIDDLEWARE if m != "portal.middleware.CitizenSessionMiddleware"]  # noqa: F405
SESSION_COOKIE_NAME = "idp_sessionid"
CSRF_COOKIE_NAME = "idp_csrftoken"

# Authorization codes and access tokens live in a cache of the IdP's own,
# shared by its workers (a folder: the demo needs no server).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(VAR_DIR / "idp" / "cache"),  # noqa: F405
    }
}

IDP_ISSUER = env_str("IDP_ISSUER", f"http://{env_str('IDP_HOST', '127.0.0.1')}:{env_str('IDP_PORT', '8001')}").rstrip(
    "/"
)
IDP_CLIENT_ID = env_str("IDP_CLIENT_ID", "fse-pacs-demo")
_web = f"{env_str('WEB_HOST', '127.0.0.1')}:{env_str('WEB_PORT', '8000')}"
IDP_REDIRECT_URIS = env_list(
    "IDP_REDIRECT_URIS",
    ",".join(
        f"http://{host}/fse/oidc/callback/" for host in dict.fromkeys([_web, _web.replace("127.0.0.1", "localhost")])
    ),
)
# An authorization code is good for one minute, an access token for five:
# the portal uses both at once.
IDP_CODE_SECONDS = 60
IDP_ACCESS_TOKEN_SECONDS = 300

# The consent form posts here and is answered with a redirect to the portal:
# browsers hold that redirect to form-action too.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        **CONTENT_SECURITY_POLICY["DIRECTIVES"],
        "form-action": [
            SELF,
            *sorted({_origin(uri) for uri in IDP_REDIRECT_URIS if _origin(uri)}),
        ],
    }
}
