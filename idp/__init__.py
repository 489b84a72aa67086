"""The "IdP di prova": a small OpenID Provider that stands in for the region's
SPID/CIE broker in the demo and in the tests. Never part of production.

It runs as its own process (``idp.settings``, ``idp.wsgi``: the Procfile's
``idp`` line, 127.0.0.1:8001 by default), so that the portal logs citizens in
through the same mozilla-django-oidc path it uses against the real broker: a
browser redirect to another origin, a server-to-server token request, an ID
token checked against the provider's JWKS, the claims from the userinfo
endpoint.

Its test identities are the people of the patient registry with a codice
fiscale (the demo citizens and anyone the CUP registers); whoever uses it may
be anyone, as on the SPID validator's test IdP. The OAuth 2.0 and OpenID
Connect machinery is Authlib's (:mod:`idp.server`); the pages are
:mod:`idp.views`; the client's secret and the signing key are generated on
first use under ``PACS_VAR_DIR/idp/`` (:mod:`idp.keys`).
"""
