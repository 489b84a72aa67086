"""System checks for configuration that can be wrong (``manage.py check``)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from archive.dicomnet import fence
from archive.dicomnet.peers import is_loopback, tls_server_context
from kernel.audit import MIN_KEY_BYTES, AuditKeyError, key_may_be_generated, key_path, key_read


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


@register()
def check_storage(app_configs: Any, **kwargs: Any) -> list[Any]:
    errors: list[CheckMessage] = []
    for name in ("PACS_FACILITY_TIER_DIR", "PACS_INCOMING_DIR"):
        path = Path(getattr(settings, name))
        if not _writable_dir(path):
            errors.append(Error(f"{name}={path} is not a writable folder.", id="archive.E001"))
    try:
        if os.stat(settings.PACS_FACILITY_TIER_DIR).st_dev != os.stat(settings.PACS_INCOMING_DIR).st_dev:
            errors.append(
                Warning(
                    "PACS_INCOMING_DIR and PACS_FACILITY_TIER_DIR are on different filesystems: "
                    "every received file is copied instead of renamed.",
                    id="archive.W001",
                )
            )
    except OSError:
        pass
    for alias in ("longterm", "preservation"):
        config = settings.STORAGES.get(alias)
        if config is None:
            errors.append(Error(f"STORAGES has no {alias!r} tier.", id="archive.E005"))
            continue
        location = config.get("OPTIONS", {}).get("location")
        if config.get("BACKEND", "").endswith("FileSystemStorage") and not _writable_dir(Path(location)):
            errors.append(Error(f"the {alias} tier folder {location} is not writable.", id="archive.E005"))
    return errors


def _private_folders() -> list[tuple[str, Path]]:
    folders = [
        ("PACS_VAR_DIR", Path(settings.VAR_DIR)),
        ("PACS_FACILITY_TIER_DIR", Path(settings.PACS_FACILITY_TIER_DIR)),
        ("PACS_INCOMING_DIR", Path(settings.PACS_INCOMING_DIR)),
        ("PACS_SIGNING_DIR", Path(settings.PACS_SIGNING_DIR)),
        ("PACS_PORTAL_PACKAGE_DIR", Path(settings.PACS_PORTAL_PACKAGE_DIR)),
        ("PACS_PRESERVATION_EXPORT_DIR", Path(settings.PACS_PRESERVATION_EXPORT_DIR)),
    ]
    for alias in ("longterm", "preservation"):
        config = settings.STORAGES.get(alias) or {}
        location = config.get("OPTIONS", {}).get("location")
        if config.get("BACKEND", "").endswith("FileSystemStorage") and location:
            folders.append((f"the {alias} tier", Path(location)))
    return folders


@register()
def check_private_folders(app_configs: Any, **kwargs: Any) -> list[Any]:
    """Folders of patient data that others can enter: made by an older version, or by hand.
    What the archive creates itself is 0700 (archive.storage.tiers, the umask in settings)."""
    warnings = []
    for name, path in _private_folders():
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            continue  # not there yet: created 0700 when first needed
        if mode & settings.PACS_UMASK:
            warnings.append(
                Warning(
                    f"{name}={path} has mode {mode:04o}: other accounts can enter it.",
                    hint=f"chmod -R go-rwx {path}",
                    id="archive.W010",
                )
            )
    return warnings


@register()
def check_dicom(app_configs: Any, **kwargs: Any) -> list[Any]:
    errors: list[CheckMessage] = []
    if not 1 <= settings.PACS_DICOM_PORT <= 65535:
        errors.append(Error(f"PACS_DICOM_PORT={settings.PACS_DICOM_PORT} is not a TCP port.", id="archive.E002"))
    if settings.PACS_DICOM_MAX_PDU < 4096:
        errors.append(Error("PACS_DICOM_MAX_PDU must be at least 4096 bytes.", id="archive.E003"))
    if settings.PACS_DICOM_PDU_READ_LIMIT < settings.PACS_DICOM_MAX_PDU + 6:
        errors.append(
            Error(
                "PACS_DICOM_PDU_READ_LIMIT must exceed PACS_DICOM_MAX_PDU (plus the 6-byte PDU header).",
                id="archive.E004",
            )
        )
    if settings.PACS_DICOM_ACCEPT_UNKNOWN_AE and not settings.DEBUG:
        errors.append(
            Warning(
                "PACS_DICOM_ACCEPT_UNKNOWN_AE is on: any DICOM peer may store images. Use it only for the demo.",
                id="archive.W002",
            )
        )
    if settings.PACS_DICOM_ACCEPT_UNKNOWN_AE and not is_loopback(settings.PACS_DICOM_HOST):
        errors.append(
            Warning(
                f"PACS_DICOM_ACCEPT_UNKNOWN_AE is on and the listener binds {settings.PACS_DICOM_HOST}: "
                "any device on the network may store images. The demo binds 127.0.0.1.",
                id="archive.W012",
            )
        )
    if settings.PACS_DICOM_REQUEST_TIMEOUT <= 0:
        errors.append(Error("PACS_DICOM_REQUEST_TIMEOUT must be a positive number of seconds.", id="archive.E010"))
    if settings.PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS < 1:
        errors.append(Error("PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS must be at least 1.", id="archive.E015"))
    elif settings.PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS >= settings.PACS_DICOM_MAX_ASSOCIATIONS:
        errors.append(
            Warning(
                "PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS is not below PACS_DICOM_MAX_ASSOCIATIONS: "
                "one host can take every association slot.",
                id="archive.W011",
            )
        )
    errors.extend(_check_dicom_tls())
    return errors


@register()
def check_pynetdicom_fence(app_configs: Any, **kwargs: Any) -> list[Any]:
    """pynetdicom is the version archive/dicomnet/fence.py adapts, with every name it
    relies on: otherwise the listener does not start (``manage.py dicom_listener``
    runs the checks first; ``start_listener`` runs the fence's own again)."""
    return [
        Error(
            problem,
            hint=f"install pynetdicom=={fence.PYNETDICOM_VERSION} (requirements.txt), or review the fence "
            "against the new version and update its table, names and pin together.",
            id="archive.E030",
        )
        for problem in fence.problems()
    ]


def _check_dicom_tls() -> list[Any]:
    """DICOM TLS: all three files or none, each readable, and a context that loads."""
    names = ("PACS_DICOM_TLS_CERT", "PACS_DICOM_TLS_KEY", "PACS_DICOM_TLS_CA")
    given = {name: getattr(settings, name) for name in names if getattr(settings, name)}
    if not given:
        return []
    errors: list[Any] = []
    for name in names:
        if name not in given:
            errors.append(Error(f"DICOM TLS needs {', '.join(names)}; {name} is not set.", id="archive.E011"))
        elif not os.access(given[name], os.R_OK) or not Path(given[name]).is_file():
            errors.append(Error(f"{name}={given[name]} is not a readable file.", id="archive.E012"))
    if not 1 <= settings.PACS_DICOM_TLS_PORT <= 65535 or settings.PACS_DICOM_TLS_PORT == settings.PACS_DICOM_PORT:
        errors.append(
            Error(
                f"PACS_DICOM_TLS_PORT={settings.PACS_DICOM_TLS_PORT} is not a TCP port other than PACS_DICOM_PORT.",
                id="archive.E013",
            )
        )
    if errors:
        return errors
    try:
        tls_server_context(
            cert=given["PACS_DICOM_TLS_CERT"],
            key=given["PACS_DICOM_TLS_KEY"],
            ca=given["PACS_DICOM_TLS_CA"],
            key_passphrase=settings.PACS_DICOM_TLS_KEY_PASSPHRASE,
        )
    except (OSError, ssl.SSLError) as exc:
        errors.append(
            Error(
                f"the DICOM TLS certificate, key or CA cannot be loaded: {exc}",
                hint="PEM files; the key must match the certificate (PACS_DICOM_TLS_KEY_PASSPHRASE if it is encrypted).",
                id="archive.E014",
            )
        )
    return errors


@register()
def check_audit_key(app_configs: Any, **kwargs: Any) -> list[Any]:
    """The audit key: readable, long enough, private; named explicitly outside the embedded demo."""
    errors: list[Any] = []
    path = key_path()
    embedded = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    if not settings.PACS_AUDIT_KEY_FILE and not settings.DEBUG and not embedded:
        # A warning, not an error: benchmarks and test runs use PostgreSQL too.
        # Production runs `check --deploy`, where it is an error (archive.E020).
        errors.append(
            Warning(
                "PACS_AUDIT_KEY_FILE is not set: the audit key is generated next to the embedded data "
                "(PACS_VAR_DIR), which is for the demo and the tests only.",
                id="archive.W021",
            )
        )
    if not path.exists() and key_may_be_generated(path):
        return errors  # the embedded key: made on first use
    try:
        key_read(path)
    except AuditKeyError as exc:
        errors.append(Error(f"{exc}.", id="archive.E021"))
        return errors
    if path.stat().st_mode & 0o077:
        errors.append(
            Warning(
                f"the audit key file {path} is readable by others than its owner.",
                hint="chmod 0400 (or 0600) the key file.",
                id="archive.W020",
            )
        )
    for name in settings.PACS_AUDIT_PREVIOUS_KEY_FILES:
        try:
            key_read(Path(name))
        except AuditKeyError as exc:
            errors.append(Error(f"PACS_AUDIT_PREVIOUS_KEY_FILES: {exc}.", id="archive.E021"))
    return errors


@register(deploy=True)
def check_audit_key_deploy(app_configs: Any, **kwargs: Any) -> list[Any]:
    """In production the audit key is a file of its own, not the embedded one under PACS_VAR_DIR."""
    if settings.PACS_AUDIT_KEY_FILE and not key_may_be_generated(key_path()):
        return []
    return [
        Error(
            "PACS_AUDIT_KEY_FILE must name a file outside PACS_VAR_DIR: the audit log's key must not lie "
            "with the data it protects (a mounted secret the database's administrators cannot read).",
            hint=f"openssl rand -hex 32 > /run/secrets/pacs-audit-key (at least {MIN_KEY_BYTES} bytes, mode 0400).",
            id="archive.E020",
        )
    ]


@register()
def check_viewer_bundle(app_configs: Any, **kwargs: Any) -> list[Any]:
    """The radiologist's diagnostic viewer is a bundle built from frontend/viewer3d (frontend/build.mjs)."""
    bundle = Path(settings.VIEWER3D_DIST_DIR) / "viewer3d" / "viewer3d.js"
    if bundle.is_file():
        return []
    return [
        Error(
            f"The diagnostic viewer is not built: {bundle} is missing (the radiologist's viewer page needs it).",
            hint="Run `npm ci --omit=optional && npm run build` in the project folder (make run and make test do it).",
            id="archive.E040",
        )
    ]


@register(deploy=True)
def check_manifest_public_url(app_configs: Any, **kwargs: Any) -> list[Any]:
    """The study manifests (archive.manifest) tell the FSE where to fetch the images: an absolute URL."""
    if settings.PACS_PUBLIC_URL:
        return []
    return [
        Warning(
            "PACS_PUBLIC_URL is not set: the studies' XDS-I.b manifests carry no Retrieve URL (WADO-RS), "
            "only the facility's AE title.",
            hint="PACS_PUBLIC_URL=https://pacs.example.org (the address the FSE and other clients use).",
            id="archive.W050",
        )
    ]
