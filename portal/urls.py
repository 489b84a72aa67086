"""The portal's addresses, under /fse/: the citizen's pages, then the staff desk (``sportello/``)."""

from __future__ import annotations

from django.urls import include, path

from . import auth, desk_views, views

# The staff desk (portal.desk_views), under sportello/.
_desk = [
    path("emergenza/", desk_views.emergency, name="staff_emergency_access"),
    path("deleghe/", desk_views.delegations, name="staff_delegations"),
    path("deleghe/<int:pk>/revoca/", desk_views.delegation_revoke_view, name="staff_delegation_revoke"),
]

app_name = "portal"

urlpatterns = [
    path("accesso/", views.login_view, name="login"),
    # SPID/CIE over OpenID Connect (mozilla-django-oidc): 404 unless PACS_OIDC_ENABLED.
    path("oidc/authenticate/", auth.CitizenOIDCLoginView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", auth.CitizenOIDCCallbackView.as_view(), name="oidc_authentication_callback"),
    path("", views.exams, name="exams"),
    path("esami/<int:pk>/", views.exam, name="exam"),
    path("esami/<int:pk>/pacchetti/<str:kind>/", views.package_request, name="package_request"),
    path("esami/<int:pk>/immagini/", views.viewer, name="viewer"),
    path("esami/<int:pk>/immagini/<int:instance_pk>.jpg", views.preview, name="preview"),
    path("esami/<int:pk>/oscuramento/", views.concealment, name="concealment"),
    path("esami/<int:pk>/revoca-consenso/", views.consent_revoke, name="consent_revoke"),
    path("pacchetti/<int:pk>/", views.package, name="package"),
    path("scarica/<str:token>/", views.download, name="download"),
    path("accessi/", views.access_log, name="access_log"),
    path("deleghe/", views.delegations, name="delegations"),
    path("sportello/", include(_desk)),
]
