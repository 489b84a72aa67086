"""The demo's preservation officer can approve discards and sign volumes; the local TSA exists."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from archive import demo
from archive.reporting import signing
from preservation import demo as preservation_demo
from preservation import timestamp


def test_the_demo_officer_signs_and_approves(db: None) -> None:
    demo.demo_accounts_load()
    preservation_demo.demo_load()
    preservation_demo.demo_load()  # idempotent
    officer = get_user_model().objects.get(username="conservatore")
    assert officer.has_perm("preservation.approve_discard")
    assert officer.has_perm("preservation.view_package") and officer.has_perm("preservation.add_legalhold")
    assert not get_user_model().objects.get(username="radiologo").has_perm("preservation.approve_discard")
    assert "Zorzut" in signing.signer_name(officer)
    key, cert, cnf = timestamp.tsa_paths()
    assert key.exists() and cert.exists() and cnf.exists()
