"""The IdP di prova's addresses (its own process: ``idp.settings``)."""

from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path(".well-known/openid-configuration", views.openid_configuration, name="idp_discovery"),
    path("jwks.json", views.jwks_view, name="idp_jwks"),
    path("authorize/", views.authorize, name="idp_authorize"),
    path("token/", views.token, name="idp_token"),
    path("userinfo/", views.userinfo, name="idp_userinfo"),
    path("i18n/", include("django.conf.urls.i18n")),
]
