"""The admin form of a DICOM node (``RemoteNode``)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.text import capfirst

from archive.dicomnet import peers
from archive.models import RemoteNode

_FINGERPRINT = RemoteNode._meta.get_field("tls_certificate_sha256")


class RemoteNodeForm(forms.ModelForm):
    """The model's own validation of addresses and fingerprint (``RemoteNode.clean_fields``),
    with room in the fingerprint field for the form openssl prints
    (``sha256 Fingerprint=AB:CD:...``, 95 characters before it is normalised)."""

    tls_certificate_sha256 = forms.CharField(
        label=capfirst(_FINGERPRINT.verbose_name),
        help_text=_FINGERPRINT.help_text,
        required=False,
        max_length=128,
    )

    class Meta:
        model = RemoteNode
        fields = "__all__"
        widgets = {"addresses": forms.Textarea(attrs={"rows": 2})}

    def clean_tls_certificate_sha256(self) -> Any:
        return peers.fingerprint_normalize(self.cleaned_data.get("tls_certificate_sha256", ""))
