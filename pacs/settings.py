"""Settings of the regional PACS: one module, configured by environment variables.

A fresh checkout runs with no server at all: SQLite (WAL) and files under
``PACS_VAR_DIR`` (default ``var/``), and a Celery broker kept in that folder.
Production differs only by environment: ``DATABASE_URL`` (PostgreSQL),
``REDIS_URL`` (Celery broker and cache), ``SECRET_KEY`` and the rest below.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from kernel import logs, tasknames

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_secret(name: str, default: str = "") -> str:
    """Read ``NAME`` or, for secrets mounted as files, the file named by ``NAME_FILE``."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_umask(name: str, default: str) -> int:
    """An octal umask that at least keeps other users out (``007`` set)."""
    value = os.environ.get(name) or default
    try:
        mask = int(value, 8)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an octal umask such as 077") from None
    if not 0 <= mask <= 0o777 or mask & 0o007 != 0o007:
        raise ImproperlyConfigured(f"{name}={value!r} must keep other users out (end in 7, e.g. 077 or 027)")
    return mask


# Every file and folder a process of the archive creates is its service
# account's alone: 0600 and 0700 under the default 077. The umask is set here,
# not in manage.py, wsgi.py and celery.py, because every entry point (those,
# asgi.py, pytest, a Celery worker) loads this module before it writes
# anything, including the folders and the secret key created just below; and
# because some files are created where no mode can be passed: the SQLite
# database and its -wal/-shm files, the file cache, kombu's folder broker,
# Celery beat's schedule, what openssl writes for the demo PKI. The code that
# writes patient data sets 0600/0700 explicitly as well (archive.storage.tiers), so
# that a process embedding the archive with a looser umask does not widen them.
# PACS_UMASK=027 lets a group (a backup agent) read; other users never.
PACS_UMASK = env_umask("PACS_UMASK", "077")
os.umask(PACS_UMASK)

VAR_DIR = Path(env_str("PACS_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else generated once into VAR_DIR (never committed)."""
    key = env_secret("SECRET_KEY")
    if key:
        return key
    path = VAR_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(50)
    # O_EXCL: two processes starting together must not each write their own key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "pacs.apps.KnoxConfig",  # knox: API tokens, hashed and expiring (archive.api_tokens); Italian names
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "corsheaders",
    "csp",
    "pacs.apps.AxesConfig",  # axes: login throttling (portal.auth); Italian names in the admin
    "mozilla_django_oidc",
    "kernel",  # the audit log, codice fiscale, web helpers: imports none of the apps below
    "archive",
    "booking",
    "portal",
    "fse_gateway",  # publication to the national FSE 2.0 gateway (an outbox); below nothing imports it
    "preservation",
    "research",  # anonymised exports for teaching and research: imports the archive only
    "pacs.ops",  # operations: health, metrics, logs, backup and restore (their commands)
    "django_prometheus",  # /metrics: request and process metrics; the archive's own in pacs.ops.metrics
]

MIDDLEWARE = [
    # The request's id for every log line it causes, echoed as X-Request-ID (kernel/logs.py).
    "pacs.ops.logs.RequestIdMiddleware",
    # django-prometheus: first and last, so the request metrics time the whole stack.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "portal.middleware.CitizenSessionMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its answer.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "pacs.urls"
WSGI_APPLICATION = "pacs.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
# Embedded default: SQLite in WAL mode. synchronous=FULL because a C-STORE is
# acknowledged only after its index row is committed: the commit must survive
# a power cut, not only a crash of the process. IMMEDIATE transactions take
# the write lock at BEGIN, so concurrent associations queue on the busy
# timeout instead of failing with "database is locked" on lock upgrade.
SQLITE_PATH = VAR_DIR / "pacs.sqlite3"
DATABASE_URL = env_secret("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
    DB_PREPARE_THRESHOLD = env_int("DB_PREPARE_THRESHOLD", 2)
    # PostgreSQL's JIT compilation: off on every connection (kernel.dbsession), unless DB_JIT=1.
    DB_JIT = env_bool("DB_JIT", False)
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DB_PREPARE_THRESHOLD > 0:
        # Server-side binding, and a statement sent twice on a connection prepared: PostgreSQL
        # then plans it once per connection, not once per run. The hot paths' statements (the
        # access policy's joins, a store's index rows) cost more to plan than to run (1.2 ms
        # against 0.16 ms for an instance's /rendered). DB_PREPARE_THRESHOLD=0 binds
        # client-side as before (a pooler in transaction mode that cannot keep prepared
        # statements needs it).
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            server_side_binding=True, prepare_threshold=DB_PREPARE_THRESHOLD
        )
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(SQLITE_PATH),
            "TEST": {"NAME": str(VAR_DIR / "test-pacs.sqlite3")},
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Opening SQLite (and running its PRAGMAs) costs more than a store: keep
    # each thread's connection; the listener closes it when the association ends.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": env_int("SQLITE_BUSY_TIMEOUT", 60),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
        }
    )
    # Tests run the listener and the worker in other processes: they must see
    # the test database, so it lives in a file, not in memory.
    DATABASES["default"].setdefault("TEST", {}).setdefault("NAME", str(VAR_DIR / "test-pacs.sqlite3"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Celery -------------------------------------------------------
REDIS_URL = env_secret("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600)}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }
    # kombu's filesystem transport: a broker that is only a folder, shared by
    # every process of the embedded installation.
    _broker_dir = VAR_DIR / "celery-broker"
    _broker_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://localhost/"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "control_folder": str(VAR_DIR / "celery-control"),
        "store_processed": False,
    }
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "pacs")
# Work routed by kind (kernel.tasknames.QUEUES): each kind its own queue, so that a
# host runs the kinds it is sized for (`celery -A pacs worker -Q lifecycle,preservation`,
# docs/DEPLOYMENT.md); a worker started without -Q consumes them all (make run).
# The prefix keeps several installations (or test sessions) apart on one broker.
CELERY_QUEUE_PREFIX = env_str("CELERY_QUEUE_PREFIX", "")
PACS_TASK_QUEUES: dict[str, str] = {
    kind: CELERY_TASK_DEFAULT_QUEUE if kind == "default" else f"{CELERY_QUEUE_PREFIX}{kind}"
    for kind in tasknames.QUEUES
}
CELERY_TASK_QUEUES = [Queue(name, Exchange(name), routing_key=name) for name in PACS_TASK_QUEUES.values()]
CELERY_TASK_ROUTES = {
    name: {"queue": PACS_TASK_QUEUES[kind]} for kind, names in tasknames.QUEUES.items() for name in names
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "Europe/Rome"
CELERY_BEAT_SCHEDULE = {
    "post-ingest-sweep": {
        "task": tasknames.POST_INGEST_SWEEP,
        "schedule": env_float("PACS_POST_INGEST_SWEEP_SECONDS", 300.0),
    },
    # What a signing queued on commit and the broker lost: one sweep per
    # follow-up, each in the app that does the work (PACS_REPORT_FOLLOWUP_*).
    "report-encapsulate-sweep": {
        "task": tasknames.REPORT_ENCAPSULATE_SWEEP,
        "schedule": env_float("PACS_REPORT_FOLLOWUP_SWEEP_SECONDS", 300.0),
    },
    "study-manifest-sweep": {
        "task": tasknames.STUDY_MANIFEST_SWEEP,
        "schedule": env_float("PACS_REPORT_FOLLOWUP_SWEEP_SECONDS", 300.0),
    },
    "booking-reported-sweep": {
        "task": tasknames.BOOKING_REPORTED_SWEEP,
        "schedule": env_float("PACS_REPORT_FOLLOWUP_SWEEP_SECONDS", 300.0),
    },
    # MPPS: a booking left behind its modality's procedure step (a task lost with the broker).
    "booking-procedure-step-sweep": {
        "task": tasknames.BOOKING_PROCEDURE_STEP_SWEEP,
        "schedule": env_float("PACS_REPORT_FOLLOWUP_SWEEP_SECONDS", 300.0),
    },
    "report-publish-sweep": {
        "task": tasknames.REPORT_PUBLISH_SWEEP,
        "schedule": env_float("PACS_REPORT_FOLLOWUP_SWEEP_SECONDS", 300.0),
    },
    "cd-media-sweep": {
        "task": tasknames.CD_MEDIA_SWEEP,
        "schedule": env_float("PACS_REPORT_FOLLOWUP_SWEEP_SECONDS", 300.0),
    },
    "portal-packages-purge": {
        "task": tasknames.DOWNLOAD_PACKAGES_PURGE,
        "schedule": env_float("PACS_PORTAL_PURGE_SECONDS", 3600.0),
    },
    # Copy to the long-term tier, verify, evict; then the scope migration, if any.
    "lifecycle-run": {
        "task": tasknames.LIFECYCLE_RUN,
        "schedule": env_float("PACS_LIFECYCLE_SECONDS", 900.0),
    },
    "fixity-audit": {
        "task": tasknames.STORAGE_FIXITY_AUDIT,
        "schedule": crontab(hour=env_int("PACS_FIXITY_HOUR", 2), minute=30),
    },
    "bookings-prefetch": {
        "task": tasknames.BOOKINGS_PREFETCH,
        "schedule": crontab(hour=env_int("PACS_PREFETCH_HOUR", 5), minute=0),
    },
}

# Mail (the portal's "your package is ready"): the console in the demo, SMTP when EMAIL_HOST is set.
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "fse-pacs@localhost")

# --- Auth, i18n, static -----------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Logins are throttled by django-axes (first backend): after AXES_FAILURE_LIMIT
# wrong passwords for one username from one address, that pair is locked out
# for AXES_COOLOFF_MINUTES; after PACS_LOGIN_ADDRESS_FAILURE_LIMIT wrong
# passwords from one address, whatever the usernames, the address is (except
# the addresses or CIDR blocks of PACS_LOGIN_ADDRESS_EXEMPT: a hospital's NAT).
# Authentication without a request (a test client's login, a management
# command) is not throttled: see portal.auth.
AUTHENTICATION_BACKENDS = [
    "portal.auth.ThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_float("AXES_COOLOFF_MINUTES", 15.0) / 60.0  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_DISABLE_ACCESS_LOG = True  # successful logins are in the audit log
AXES_LOCKOUT_CALLABLE = "portal.auth.lockout_response"
AXES_HANDLER = "portal.auth.TieredLockoutHandler"
PACS_LOGIN_ADDRESS_FAILURE_LIMIT = env_int("PACS_LOGIN_ADDRESS_FAILURE_LIMIT", 30)
PACS_LOGIN_ADDRESS_EXEMPT = env_list("PACS_LOGIN_ADDRESS_EXEMPT")
# The client's address (audit log, lockout): REMOTE_ADDR, or behind reverse
# proxies listed here (addresses or CIDR blocks) the address they forwarded in
# X-Forwarded-For. Without it, behind a proxy every client has the proxy's
# address, and the address tier would lock everyone out at once.
PACS_TRUSTED_PROXIES = env_list("PACS_TRUSTED_PROXIES")
AXES_CLIENT_IP_CALLABLE = "kernel.web.client_ip"

# The citizen's login through the region's identity provider (SPID/CIE over
# OpenID Connect, mozilla-django-oidc): the authorization code with PKCE and a
# nonce, the ID token checked against the provider's JWKS, the claims read
# from its userinfo endpoint. Off until the provider's endpoints are given;
# `make run` points them at the demo's "IdP di prova" (idp/, its own process).
# Without it the portal has only the local accounts (codice fiscale and password).
PACS_OIDC_ENABLED = env_bool("PACS_OIDC_ENABLED", False)
OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = env_secret("OIDC_RP_CLIENT_SECRET")
OIDC_RP_SIGN_ALGO = env_str("OIDC_RP_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid profile email")
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("OIDC_OP_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = env_str("OIDC_OP_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = env_str("OIDC_OP_USER_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = env_str("OIDC_OP_JWKS_ENDPOINT")
OIDC_OP_LOGOUT_ENDPOINT = env_str("OIDC_OP_LOGOUT_ENDPOINT")
OIDC_CREATE_USER = True
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
# A provider that does not answer must not hold a portal worker for long.
OIDC_TIMEOUT = env_float("OIDC_TIMEOUT", 10.0)
# The views live under the portal's namespace (portal/urls.py).
OIDC_AUTHENTICATION_CALLBACK_URL = "portal:oidc_authentication_callback"
# The claim that carries the codice fiscale (SPID: "fiscalNumber", as TINIT-<cf>).
PACS_OIDC_FISCAL_CODE_CLAIM = env_str("PACS_OIDC_FISCAL_CODE_CLAIM", "fiscal_number")
# The request parameter that tells the broker which door the citizen chose
# ("spid" or "cie"); empty sends none (a broker with one door per client).
PACS_OIDC_PROVIDER_PARAM = env_str("PACS_OIDC_PROVIDER_PARAM", "idp_hint")
LOGIN_REDIRECT_URL_FAILURE = "/fse/accesso/"
if PACS_OIDC_ENABLED:
    missing = [
        name
        for name in (
            "OIDC_RP_CLIENT_ID",
            "OIDC_RP_CLIENT_SECRET",
            "OIDC_OP_AUTHORIZATION_ENDPOINT",
            "OIDC_OP_TOKEN_ENDPOINT",
            "OIDC_OP_USER_ENDPOINT",
            *(["OIDC_OP_JWKS_ENDPOINT"] if OIDC_RP_SIGN_ALGO.startswith(("RS", "ES", "PS")) else []),
        )
        if not globals()[name]
    ]
    if missing:
        raise ImproperlyConfigured(f"PACS_OIDC_ENABLED needs {', '.join(missing)}")
    AUTHENTICATION_BACKENDS.append("portal.auth.CitizenOIDCBackend")

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"

LANGUAGE_CODE = "it"
LANGUAGES = [("it", "Italiano"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
# Italian dates as prose writes them ("5 dicembre 2026"): pacs/formats/it.
FORMAT_MODULE_PATH = ["pacs.formats"]
TIME_ZONE = "Europe/Rome"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every request until collectstatic made it
# Front-end packages from npm (package.json, installed by `make run` and `make
# test` with `npm ci`), served from this server under static/vendor/: no CDN.
NODE_MODULES_DIR = BASE_DIR / "node_modules"
BOOTSTRAP_ITALIA_DIR = NODE_MODULES_DIR / "bootstrap-italia" / "dist"
# PDF.js shows the signed report in the citizen's exam page: its legacy build (older
# phones' browsers too) and the standard fonts a PDF may use without embedding them.
PDFJS_DIR = NODE_MODULES_DIR / "pdfjs-dist"
# The radiologist's diagnostic viewer (Cornerstone3D), bundled from frontend/viewer3d by
# `npm run build` (frontend/build.mjs; the Makefile runs it after `npm ci`) into
# frontend/dist/viewer3d/, served under static/viewer3d/.
VIEWER3D_DIST_DIR = BASE_DIR / "frontend" / "dist"
STATICFILES_DIRS: list[Any] = [
    BASE_DIR / "pacs" / "static",
    *([VIEWER3D_DIST_DIR] if VIEWER3D_DIST_DIR.is_dir() else []),
    *(
        (f"vendor/bootstrap-italia/{part}", BOOTSTRAP_ITALIA_DIR / part)
        for part in ("css", "js", "fonts", "svg")
        if (BOOTSTRAP_ITALIA_DIR / part).is_dir()
    ),
    *(
        (f"vendor/pdfjs/{part}", PDFJS_DIR / source)
        for part, source in (("build", "legacy/build"), ("standard_fonts", "standard_fonts"))
        if (PDFJS_DIR / source).is_dir()
    ),
]
# Without collectstatic (tests, a checkout run by hand) WhiteNoise serves from the finders.
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600)

# --- HTTPS and the browser's protections ---------------------------------------
# Off by default so that a checkout runs over plain http; the production
# environment in the README turns them on, and `manage.py check --deploy` is
# clean with it (tests/test_settings.py).
# Behind a proxy that terminates TLS: the header it sets to "https" on what it
# received over HTTPS (X-Forwarded-Proto). The proxy must set or remove it on
# every request, never pass a client's own through.
_PROXY_SSL_HEADER = env_str("SECURE_PROXY_SSL_HEADER")
if _PROXY_SSL_HEADER:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", _PROXY_SSL_HEADER):
        raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER={_PROXY_SSL_HEADER!r} is not a header name")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"


def _origin(url: str) -> str:
    match = re.match(r"^(https?://[^/?#]+)", url)
    return match.group(1) if match else ""


# Content-Security-Policy (django-csp), on every answer: scripts and styles from
# this server only, none inline (a template that ever needs one gives it
# nonce="{{ request.csp_nonce }}"); no plugins, no framing, forms posted here
# only (and to the identity provider, whose logout takes a form's redirect).
# The API's documentation pages add inline styles and a blob: worker, which
# Swagger UI and Redoc need (archive/urls.py). The diagnostic viewer's page alone
# (archive.reporting.views.viewer, VIEWER3D_CSP) compiles its codecs' WebAssembly
# and sets style attributes on its SVG measurements. Django's admin has one inline
# style, in a change list without actions (none here): cosmetic if it ever shows.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],  # Bootstrap Italia embeds one icon font as data:
        "connect-src": [SELF],
        # PDF.js renders the report in a worker of its own (pacs/static/report-viewer.js).
        "worker-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [
            SELF,
            *sorted(
                {
                    _origin(url)
                    for url in (env_str("OIDC_OP_AUTHORIZATION_ENDPOINT"), env_str("OIDC_OP_LOGOUT_ENDPOINT"))
                    if _origin(url)
                }
            ),
        ],
        "frame-ancestors": [NONE],
    },
}

# --- Storage tiers ------------------------------------------------------------
# The facility tier is one folder per facility under this root; it must be a
# local filesystem (files are written with fsync and an atomic rename).
PACS_FACILITY_TIER_DIR = Path(env_str("PACS_FACILITY_TIER_DIR", str(VAR_DIR / "tiers" / "facility"))).resolve()
# Files being received are written here first, then renamed into their tier;
# keep it on the same filesystem as the tiers so that the rename is atomic.
PACS_INCOMING_DIR = Path(env_str("PACS_INCOMING_DIR", str(VAR_DIR / "incoming"))).resolve()
# Files saved through a Django storage (none hold patient data today; collectstatic's
# output does) get the archive's modes, not Django's default 0644.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
STORAGES: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": VAR_DIR / "media"},
    },
    "facility": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": PACS_FACILITY_TIER_DIR},
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}


def _archive_storage(kind: str) -> dict[str, Any]:
    """The long-term or preservation tier: a folder by default, an S3-compatible
    bucket when ``PACS_<KIND>_S3_BUCKET`` is set (``AWS_S3_ENDPOINT_URL`` for a
    store other than AWS; keys from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    or their ``_FILE`` variants)."""
    bucket = env_str(f"PACS_{kind.upper()}_S3_BUCKET")
    if not bucket:
        folder = Path(env_str(f"PACS_{kind.upper()}_TIER_DIR", str(VAR_DIR / "tiers" / kind))).resolve()
        return {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": folder}}
    from botocore.config import Config

    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": env_str("AWS_S3_ENDPOINT_URL") or None,
            "region_name": env_str("AWS_S3_REGION_NAME", "us-east-1"),
            "access_key": env_secret("AWS_ACCESS_KEY_ID") or None,
            "secret_key": env_secret("AWS_SECRET_ACCESS_KEY") or None,
            "location": env_str(f"PACS_{kind.upper()}_S3_PREFIX"),
            "file_overwrite": False,
            # An unreachable store must fail a lifecycle step quickly (the
            # next run finishes the job), not hang a worker.
            "client_config": Config(
                connect_timeout=env_float("AWS_S3_CONNECT_TIMEOUT", 5.0),
                read_timeout=env_float("AWS_S3_READ_TIMEOUT", 30.0),
                retries={"max_attempts": env_int("AWS_S3_MAX_ATTEMPTS", 3), "mode": "standard"},
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        },
    }


STORAGES["longterm"] = _archive_storage("longterm")
STORAGES["preservation"] = _archive_storage("preservation")

# --- Lifecycle ----------------------------------------------------------------
# The long-term archive: one regional ("region") or one per health authority
# ("authority"). Changing it starts a background migration (archive.storage.lifecycle).
PACS_LONG_TERM_SCOPE = env_str("PACS_LONG_TERM_SCOPE", "region")
if PACS_LONG_TERM_SCOPE not in ("region", "authority"):
    raise ImproperlyConfigured("PACS_LONG_TERM_SCOPE must be 'region' or 'authority'")
# Defaults for facilities and modalities without a LifecyclePolicy row.
PACS_MIGRATE_AFTER_DAYS = env_float("PACS_MIGRATE_AFTER_DAYS", 7.0)
PACS_EVICT_AFTER_DAYS = env_float("PACS_EVICT_AFTER_DAYS", 365.0)
PACS_LIFECYCLE_BATCH = env_int("PACS_LIFECYCLE_BATCH", 500)
# Copies are made by this many threads and recorded per chunk (one transaction,
# after one fsync per folder): a worker killed mid-chunk leaves files that
# the next run adopts.
PACS_LIFECYCLE_THREADS = env_int("PACS_LIFECYCLE_THREADS", 4)
PACS_LIFECYCLE_CHUNK = env_int("PACS_LIFECYCLE_CHUNK", 50)
# An instance whose copy fails because its sources are damaged or missing is
# tried again after this many seconds, doubling at each failure up to the
# maximum, and skipped in the queue meanwhile (a store that does not answer
# stops the run instead, and its objects keep their place).
PACS_LIFECYCLE_RETRY_SECONDS = env_int("PACS_LIFECYCLE_RETRY_SECONDS", 900)
PACS_LIFECYCLE_RETRY_MAX_SECONDS = env_int("PACS_LIFECYCLE_RETRY_MAX_SECONDS", 86400)
# A released copy's file whose removal its process did not finish (killed after the
# commit) is removed by the lifecycle pass after this many seconds (archive.removals).
PACS_FILE_REMOVAL_GRACE_SECONDS = env_float("PACS_FILE_REMOVAL_GRACE_SECONDS", 60.0)
# A recalled (or prefetched) object stays in the facility tier this long.
PACS_RECALL_KEEP_DAYS = env_float("PACS_RECALL_KEEP_DAYS", 30.0)
# A read served from the long-term tier queues the recall of its study into its facility's tier.
PACS_RECALL_ON_READ = env_bool("PACS_RECALL_ON_READ", True)
# Prefetch for a booking: priors of the same modality or body part, this many
# years back, recalled this many days ahead of the appointment.
PACS_PREFETCH_YEARS = env_int("PACS_PREFETCH_YEARS", 5)
PACS_PREFETCH_DAYS_AHEAD = env_int("PACS_PREFETCH_DAYS_AHEAD", 2)
# Fixity audit: every copy re-read at least once per cycle, plus a random sample each night.
PACS_FIXITY_CYCLE_DAYS = env_int("PACS_FIXITY_CYCLE_DAYS", 90)
PACS_FIXITY_SAMPLE = env_int("PACS_FIXITY_SAMPLE", 100)

# --- DICOM network ------------------------------------------------------------
# Loopback by default, as the web server: a fresh checkout (and `make run`,
# which accepts unknown AEs) is not reachable from the network. Production
# sets the hospital network's interface, or 0.0.0.0.
PACS_DICOM_HOST = env_str("PACS_DICOM_HOST", "127.0.0.1")
PACS_DICOM_PORT = env_int("PACS_DICOM_PORT", 11112)
# The facilities (codes) this listener process serves, e.g. "TS-CAT,TS-MAG": each
# hospital's listener on its own network (docs/DEPLOYMENT.md). Empty: every facility.
# Another facility's called AE title is rejected; an unknown code stops start-up.
PACS_DICOM_FACILITIES = env_list("PACS_DICOM_FACILITIES")
# Accept associations from calling AE titles that are not registered remote
# nodes: they may C-ECHO and C-STORE, nothing else. Only for the demo:
# production must leave it off.
PACS_DICOM_ACCEPT_UNKNOWN_AE = env_bool("PACS_DICOM_ACCEPT_UNKNOWN_AE", False)
# Processes serving the listener's port(s) (archive/dicomnet/prefork.py): one
# process uses one core for its CPU work (the GIL), so a listener that receives
# from several modalities at once runs one per core. 0: one per CPU this process
# may use. Each process opens its own database connections (one per association).
# Default 1: a fresh checkout (SQLite, one write lock) gains little from more;
# deploy/listener/*.env.example sets 0 for production.
PACS_DICOM_LISTENER_PROCESSES = env_int("PACS_DICOM_LISTENER_PROCESSES", 1)
if PACS_DICOM_LISTENER_PROCESSES < 0:
    raise ImproperlyConfigured("PACS_DICOM_LISTENER_PROCESSES is a number of processes, 0 for one per CPU")
# Established associations, all peers together (both ports, every process).
PACS_DICOM_MAX_ASSOCIATIONS = env_int("PACS_DICOM_MAX_ASSOCIATIONS", 32)
# Connections one peer address may hold at once, associated or not yet: one
# host cannot take every slot. Beyond it a new connection is closed at once.
PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS = env_int("PACS_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS", 8)
# Seconds a new connection has to complete its TLS handshake and send its
# A-ASSOCIATE-RQ; then it is closed. Until then it holds no association slot.
PACS_DICOM_REQUEST_TIMEOUT = env_float("PACS_DICOM_REQUEST_TIMEOUT", 5.0)
# DICOM TLS (PS3.15 B.9, BCP 195) on its own port, served beside the plain one
# when a certificate is configured: the listener's certificate and key (PEM),
# and the CA that signs the nodes' client certificates (required, verified).
PACS_DICOM_TLS_PORT = env_int("PACS_DICOM_TLS_PORT", 2762)
PACS_DICOM_TLS_CERT = env_str("PACS_DICOM_TLS_CERT", "")
PACS_DICOM_TLS_KEY = env_str("PACS_DICOM_TLS_KEY", "")
PACS_DICOM_TLS_CA = env_str("PACS_DICOM_TLS_CA", "")
PACS_DICOM_TLS_KEY_PASSPHRASE = env_secret("PACS_DICOM_TLS_KEY_PASSPHRASE", "")
# The largest PDU we tell peers we accept (PS3.8 maximum length received).
PACS_DICOM_MAX_PDU = env_int("PACS_DICOM_MAX_PDU", 262144)
# The largest PDU we will read at all: some equipment ignores our maximum, but a
# peer that declares more than this is cut before anything is buffered.
PACS_DICOM_PDU_READ_LIMIT = env_int("PACS_DICOM_PDU_READ_LIMIT", 1024 * 1024)
# A received data set up to this size is held in memory until it is stored;
# a larger one is written to the incoming folder as it arrives.
PACS_DICOM_SPOOL_MEMORY = env_int("PACS_DICOM_SPOOL_MEMORY", 4 * 1024 * 1024)
PACS_DICOM_ACSE_TIMEOUT = env_float("PACS_DICOM_ACSE_TIMEOUT", 30.0)
PACS_DICOM_DIMSE_TIMEOUT = env_float("PACS_DICOM_DIMSE_TIMEOUT", 60.0)
PACS_DICOM_NETWORK_TIMEOUT = env_float("PACS_DICOM_NETWORK_TIMEOUT", 60.0)
# On SIGTERM: how long associations may go on before they are aborted (each
# between two stores, never in the middle of one).
PACS_DICOM_SHUTDOWN_GRACE = env_float("PACS_DICOM_SHUTDOWN_GRACE", 10.0)
# The listener's fast paths around pynetdicom (archive/dicomnet/fence.py, rows
# marked F): loops that wake on events instead of polling every millisecond,
# the peer read before queued responses are sent (a C-CANCEL is seen at once),
# C-FIND pending responses written straight from the index rows as whole PDUs,
# many per socket write (archive/dicomnet/find_fast.py), TCP_NODELAY, large
# reads, no identifier formatting for pynetdicom's log. Off: pynetdicom's own behaviour for each
# (slower; to compare, or to rule a fast path out); the PDU length ceiling,
# the request gate and the per-address slots stay on either way.
PACS_DICOM_FAST_PATHS = env_bool("PACS_DICOM_FAST_PATHS", True)
# The listener's own Prometheus endpoint (archive/dicomnet/observe.py): associations,
# C-STOREs by outcome, C-FIND/C-MOVE/C-GET durations. Unset: not served; 0: any free
# port (printed). With several listener processes, PROMETHEUS_MULTIPROC_DIR (an
# environment variable of prometheus_client) names the folder where they add up.
PACS_DICOM_METRICS_PORT: int | None = env_int("PACS_DICOM_METRICS_PORT", -1)
PACS_DICOM_METRICS_PORT = None if PACS_DICOM_METRICS_PORT == -1 else PACS_DICOM_METRICS_PORT
if PACS_DICOM_METRICS_PORT is not None and not 0 <= PACS_DICOM_METRICS_PORT <= 65535:
    raise ImproperlyConfigured(f"PACS_DICOM_METRICS_PORT={PACS_DICOM_METRICS_PORT} is not a TCP port")
PACS_DICOM_METRICS_HOST = env_str("PACS_DICOM_METRICS_HOST", "127.0.0.1")

# --- Logging ------------------------------------------------------------------
# Every line through structlog (kernel/logs.py), with the id of the request, Celery
# task or DICOM association it belongs to. PACS_LOG_FORMAT: console (readable, make
# run) or json (one object a line, production: deploy/pacs.env.example).
PACS_LOG_FORMAT = env_str("PACS_LOG_FORMAT", "console")
if PACS_LOG_FORMAT not in logs.FORMATS:
    raise ImproperlyConfigured(f"PACS_LOG_FORMAT={PACS_LOG_FORMAT!r} is not one of {', '.join(logs.FORMATS)}")
LOGGING = logs.logging_config(
    fmt=PACS_LOG_FORMAT,
    level=env_str("LOG_LEVEL", "INFO"),
    pynetdicom_level=env_str("PYNETDICOM_LOG_LEVEL", "WARNING"),
)

# --- query/retrieve ----------------------------------------------------------
# Most matches one C-FIND answers; beyond it C-FIND ends with "out of resources"
# (narrow the query). QIDO-RS pages by PACS_QIDO_DEFAULT_LIMIT and PACS_QIDO_MAX_LIMIT.
PACS_QUERY_MAX_MATCHES = env_int("PACS_QUERY_MAX_MATCHES", 1000)
# QIDO-RS results a search without `limit` answers; when more matched, the answer
# carries the PS3.18 8.3.4.4 Warning header and the client asks for the next page
# with `offset`. A page, not everything: an unlimited ROSSI* stays as fast as a page.
PACS_QIDO_DEFAULT_LIMIT = env_int("PACS_QIDO_DEFAULT_LIMIT", 100)
# The largest QIDO-RS page: a larger `limit` is served as this many (with the Warning when more matched).
PACS_QIDO_MAX_LIMIT = env_int("PACS_QIDO_MAX_LIMIT", 1000)
if PACS_QIDO_DEFAULT_LIMIT < 1 or PACS_QIDO_MAX_LIMIT < PACS_QIDO_DEFAULT_LIMIT:
    raise ImproperlyConfigured("PACS_QIDO_DEFAULT_LIMIT must be at least 1 and at most PACS_QIDO_MAX_LIMIT")
# Wildcards (* and ?) one matching key may carry, repeated * counting as one: a
# name search needs two or three; dozens are an attack on the database's matcher.
PACS_QUERY_MAX_WILDCARDS = env_int("PACS_QUERY_MAX_WILDCARDS", 10)
# Deepest page (offset) QIDO-RS and the REST API serve: the database walks every
# match before it, so a deeper page is refused with 400 (narrow the query instead).
PACS_QUERY_MAX_OFFSET = env_int("PACS_QUERY_MAX_OFFSET", 1_000_000)
# A search that returns patient data records the patients it returned (the first N
# per answer), so that each citizen's "chi ha visto i miei dati" shows searches too.
PACS_AUDIT_MAX_PATIENTS = env_int("PACS_AUDIT_MAX_PATIENTS", 50)
# A viewer fetches each image of a study with its own DICOMweb request: the first
# image request of a reading (a user, a credential, a study, retrieve or metadata)
# is audited, the others for this many seconds after it are not, one by one; the
# event says so. The study, series and search requests are always audited, and
# every refusal and failure. 0: every image request is an event. Docs/CAPACITY.md.
PACS_AUDIT_READING_WINDOW = env_int("PACS_AUDIT_READING_WINDOW", 1800)
# The audit log's HMAC key: a file outside the database (at least 32 bytes; in
# production a mounted secret the database's administrators cannot read).
# Unset: PACS_VAR_DIR/audit.key, generated (0600) when absent, for the demo and
# the tests; a file named here is generated when absent only if it lies under
# PACS_VAR_DIR. Keys of earlier rotations stay readable to the verifier.
PACS_AUDIT_KEY_FILE = env_str("PACS_AUDIT_KEY_FILE")
PACS_AUDIT_PREVIOUS_KEY_FILES = env_list("PACS_AUDIT_PREVIOUS_KEY_FILES")
# How often the head of every audit chain is sealed into the preservation
# giornale with an RFC 3161 time stamp: a tail cut from a chain within one
# period of the last seal is the most a holder of the database can hide.
PACS_AUDIT_SEAL_SECONDS = env_float("PACS_AUDIT_SEAL_SECONDS", 3600.0)
# IssuerOfPatientID for a PatientID that is a codice fiscale: HL7 Italia's OID
# of the codice fiscale namespace. The worklist hands it to the modalities.
PACS_PATIENT_ID_ISSUER = env_str("PACS_PATIENT_ID_ISSUER", "2.16.840.1.113883.2.9.4.3.2")

# --- REST API and DICOMweb ------------------------------------------------------
REST_FRAMEWORK = {
    # Token first, as in every API view: a missing or bad token is answered 401
    # with WWW-Authenticate, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "archive.api_tokens.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: DRF's browsable pages carry inline styles the Content-Security-Policy
    # refuses; people read the API at /api/schema/swagger/.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Every error of the REST APIs as an RFC 9457 problem, by its code (DICOMweb keeps
    # PS3.18's bodies: its views use DRF's own handler).
    "EXCEPTION_HANDLER": "kernel.problems.problem_exception_handler",
}
# API tokens (POST /api/token/): stored as a SHA-512 digest, for staff and
# service accounts only, each valid this many hours; at most this many live per account.
PACS_API_TOKEN_HOURS = env_float("PACS_API_TOKEN_HOURS", 12.0)
PACS_API_TOKENS_PER_USER = env_int("PACS_API_TOKENS_PER_USER", 10)
if PACS_API_TOKEN_HOURS <= 0:
    raise ImproperlyConfigured("PACS_API_TOKEN_HOURS must be more than 0: API tokens always expire")
REST_KNOX = {
    "TOKEN_TTL": dt.timedelta(hours=PACS_API_TOKEN_HOURS),
    "AUTH_HEADER_PREFIX": "Token",  # the contract clients already follow
    "AUTO_REFRESH": False,  # a token lives its hours from issue, however much it is used
}
SPECTACULAR_SETTINGS = {
    "TITLE": "PACS regionale – API",
    "DESCRIPTION": "REST API of the regional PACS. DICOMweb (QIDO-RS, WADO-RS, STOW-RS) is served under "
    "/dicomweb/ as DICOM PS3.18 defines it and is not described here.",
    "VERSION": "1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The description of the API is public; what it describes is not.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
# Origins (scheme://host[:port]) of web viewers (e.g. OHIF) allowed to call the
# API and DICOMweb from the browser.
CORS_ALLOWED_ORIGINS = env_list("PACS_CORS_ALLOWED_ORIGINS")
CORS_URLS_REGEX = r"^/(dicomweb|api)/.*$"
CORS_ALLOW_CREDENTIALS = env_bool("PACS_CORS_ALLOW_CREDENTIALS", False)
CORS_EXPOSE_HEADERS = ["Content-Type", "Content-Length", "Warning", "Content-Location"]
# Largest STOW-RS request body, in bytes.
PACS_STOW_MAX_BYTES = env_int("PACS_STOW_MAX_BYTES", 2 * 1024 * 1024 * 1024)
# The public URL of this server (scheme://host[:port], behind a proxy the address clients use),
# for the absolute URLs in DICOMweb and API answers; empty: taken from each request's Host.
PACS_PUBLIC_URL = env_str("PACS_PUBLIC_URL", "").rstrip("/")
# IHE XDS-I.b (archive.manifest): the Imaging Document Source's unique id, the Retrieve
# Location UID of every manifest (the repositoryUniqueId a consumer's RAD-69 names);
# empty: a UID derived from PACS_PUBLIC_URL. The region's OID in production.
PACS_IMAGING_SOURCE_UID = env_str("PACS_IMAGING_SOURCE_UID", "")
if PACS_IMAGING_SOURCE_UID and not re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", PACS_IMAGING_SOURCE_UID):
    raise ImproperlyConfigured("PACS_IMAGING_SOURCE_UID must be a DICOM UID (digits and dots)")
if len(PACS_IMAGING_SOURCE_UID) > 64:
    raise ImproperlyConfigured("PACS_IMAGING_SOURCE_UID must be at most 64 characters")
# The facility (code) into which STOW-RS at the regional root /dicomweb/studies stores;
# empty: only the facility roots /dicomweb/<facility>/studies store.
PACS_DICOMWEB_STOW_FACILITY = env_str("PACS_DICOMWEB_STOW_FACILITY", "")

# --- rendering ------------------------------------------------------------------
# Images are decoded in worker processes (archive/rendering/isolated.py), so that a
# decoder that crashes, hangs or allocates without end costs one render, not the
# web worker, the listener or the Celery worker. Seconds a render may take; the
# address space each worker may use, in bytes; workers per process at most.
PACS_RENDER_TIMEOUT = env_float("PACS_RENDER_TIMEOUT", 30.0)
PACS_RENDER_MEMORY_LIMIT = env_int("PACS_RENDER_MEMORY_LIMIT", 2 * 1024 * 1024 * 1024)
PACS_RENDER_WORKERS = env_int("PACS_RENDER_WORKERS", 2)
# The largest rendered image, in pixels: a larger one (a whole mammogram asked
# for at full size) is scaled down before it is encoded.
PACS_RENDER_MAX_PIXELS = env_int("PACS_RENDER_MAX_PIXELS", 4096 * 4096)

# --- Reports and their signatures --------------------------------------------
# Signing keys and certificates: <dir>/ca.pem (the CA whose certificates the
# archive trusts), <dir>/users/<username>.key.pem (PKCS#8, encrypted with
# PACS_SIGNING_KEY_PASSPHRASE) and <dir>/users/<username>.crt.pem. The demo
# creates its own CA and a certificate per radiologist here; production
# mounts the keys the qualified certification authority issued.
PACS_SIGNING_DIR = Path(env_str("PACS_SIGNING_DIR", str(VAR_DIR / "pki"))).resolve()
PACS_SIGNING_KEY_PASSPHRASE = env_secret("PACS_SIGNING_KEY_PASSPHRASE", "")
# Also store each signed report in its study as a DICOM Encapsulated PDF instance.
PACS_REPORT_ENCAPSULATED_PDF = env_bool("PACS_REPORT_ENCAPSULATED_PDF", False)
# The OID under which the archive names its CDA documents (id/setId: <root>.4.4), its
# patients (<root>.4.1), orders (<root>.4.5), encounters (<root>.4.6) and facilities
# (<root>.4.7): the region's branch of the HL7 Italia tree (2.16.840.1.113883.2.9.2.<region>)
# or the health authority's own. The default, region "999", is for tests and the demo only.
PACS_CDA_OID_ROOT = env_str("PACS_CDA_OID_ROOT", "2.16.840.1.113883.2.9.2.999")
if not re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", PACS_CDA_OID_ROOT):
    raise ImproperlyConfigured(f"PACS_CDA_OID_ROOT must be an OID (digits and dots), not {PACS_CDA_OID_ROOT!r}")
# A signing queues its follow-ups (the Encapsulated PDF, the booking
# *refertato*, the portal's publication) on commit; a sweep queues again those
# not done this many seconds after the signing (a broker down, a process that
# died before queuing), looking back this many days (the index keeps each run
# short: raise it, for one run, after a longer outage).
PACS_REPORT_FOLLOWUP_GRACE_SECONDS = env_float("PACS_REPORT_FOLLOWUP_GRACE_SECONDS", 120.0)
PACS_REPORT_FOLLOWUP_HORIZON_DAYS = env_float("PACS_REPORT_FOLLOWUP_HORIZON_DAYS", 7.0)
# Radiologists open studies of their own health authority only, unless this
# is on (regional teleradiology) or their staff profile allows it.
PACS_REPORT_CROSS_AUTHORITY = env_bool("PACS_REPORT_CROSS_AUTHORITY", False)
# How long a published report and its images stay on the citizen's FSE, in
# days from publication (Garante privacy, guidelines on online reports, 2009:
# 45 days; regions apply 30-45). Fixed on each publication when it is made.
PACS_PORTAL_AVAILABILITY_DAYS = env_int("PACS_PORTAL_AVAILABILITY_DAYS", 45)
# A citizen's session ends after this long without a request, and in any case
# after PACS_PORTAL_SESSION_MAX_SECONDS from login.
PACS_PORTAL_SESSION_IDLE_SECONDS = env_int("PACS_PORTAL_SESSION_IDLE_SECONDS", 15 * 60)
PACS_PORTAL_SESSION_MAX_SECONDS = env_int("PACS_PORTAL_SESSION_MAX_SECONDS", 4 * 3600)
# Download links are signed, bound to the user, and expire after this long.
PACS_PORTAL_LINK_SECONDS = env_int("PACS_PORTAL_LINK_SECONDS", 3600)
# Zips for the citizen: prepared files, kept this long, in this folder. A study
# of at most PACS_PORTAL_INLINE_BYTES is zipped while the citizen waits; a
# larger one by a Celery task, with progress on the page.
PACS_PORTAL_PACKAGE_DIR = Path(env_str("PACS_PORTAL_PACKAGE_DIR", str(VAR_DIR / "portal-packages"))).resolve()
# The ISO images of the CDs to burn for patients who chose CD (portal.cdmedia).
PACS_CD_MEDIA_DIR = Path(env_str("PACS_CD_MEDIA_DIR", str(VAR_DIR / "cd-media"))).resolve()
PACS_PORTAL_PACKAGE_HOURS = env_int("PACS_PORTAL_PACKAGE_HOURS", 48)
PACS_PORTAL_INLINE_BYTES = env_int("PACS_PORTAL_INLINE_BYTES", 64 * 1024 * 1024)
# How long a professional's emergency access to a hidden (oscurato) study lasts.
PACS_EMERGENCY_ACCESS_MINUTES = env_int("PACS_EMERGENCY_ACCESS_MINUTES", 120)

# --- Preservation (conservazione a norma, issue 9) ----------------------------
# The preservation tier the archival packages (PdA) and volumes go to.
PACS_PRESERVATION_TIER = env_str("PACS_PRESERVATION_TIER", "preservation:region")
# A study is packaged once its report is signed and no instance has arrived for this long.
PACS_PRESERVATION_STABLE_MINUTES = env_float("PACS_PRESERVATION_STABLE_MINUTES", 24 * 60.0)
# The preservation officer whose key signs the volumes' indexes (a user with a
# key and certificate under PACS_SIGNING_DIR/users/; the demo's "conservatore").
PACS_PRESERVATION_SIGNER = env_str("PACS_PRESERVATION_SIGNER", "conservatore")
# The preservation-officer role: a volume index, a DIP manifest, every
# preservation signature is accepted only from a certificate that carries one
# of these certificate policies or extended key usages (dotted OIDs the CA
# issues for the role; the demo CA's by default) and, when subjects are
# listed, whose subject has one of these attribute=value pairs
# (e.g. serialNumber=TINIT-ZRZNNA80A41L424X, for a qualified CA whose policy
# every holder carries). Checked when signing, by verify_package and by the fixity audit.
PACS_PRESERVATION_SIGNER_POLICIES = env_list("PACS_PRESERVATION_SIGNER_POLICIES", "1.3.6.1.4.1.32473.1.9.2")
PACS_PRESERVATION_SIGNER_SUBJECTS = env_list("PACS_PRESERVATION_SIGNER_SUBJECTS")
# Who submits (produttore), who holds (conservatore), as the SInCRO index names them.
PACS_PRESERVATION_SUBMITTER = env_str(
    "PACS_PRESERVATION_SUBMITTER", "Regione Autonoma Friuli Venezia Giulia – PACS regionale"
)
PACS_PRESERVATION_HOLDER = env_str("PACS_PRESERVATION_HOLDER", "Servizio di conservazione regionale")
# The classification (titolario) index of the documents.
PACS_PRESERVATION_CLASSIFICATION = env_str("PACS_PRESERVATION_CLASSIFICATION", "VI.3 – Diagnostica per immagini")
# A volume is closed with at most this many packages.
PACS_PRESERVATION_VOLUME_MAX_PACKAGES = env_int("PACS_PRESERVATION_VOLUME_MAX_PACKAGES", 500)
# Every AIP's hashes are read again at least once per cycle.
PACS_PRESERVATION_FIXITY_CYCLE_DAYS = env_int("PACS_PRESERVATION_FIXITY_CYCLE_DAYS", 365)
# Dissemination packages (PdD) are written here.
PACS_PRESERVATION_EXPORT_DIR = Path(
    env_str("PACS_PRESERVATION_EXPORT_DIR", str(VAR_DIR / "preservation-exports"))
).resolve()
# A pause between the files of a package, in seconds: spares a busy archive's I/O.
PACS_PRESERVATION_THROTTLE_SECONDS = env_float("PACS_PRESERVATION_THROTTLE_SECONDS", 0.0)
# The RFC 3161 time-stamp authority: an HTTP TSA (the query is POSTed as
# application/timestamp-query) or, when empty, a local one run by `openssl ts`
# with the key, certificate and configuration in PACS_TSA_DIR (the demo makes them).
PACS_TSA_URL = env_str("PACS_TSA_URL")
PACS_TSA_DIR = Path(env_str("PACS_TSA_DIR", str(PACS_SIGNING_DIR / "tsa"))).resolve()
PACS_TSA_TIMEOUT = env_float("PACS_TSA_TIMEOUT", 30.0)
PACS_TSA_USERNAME = env_str("PACS_TSA_USERNAME")
PACS_TSA_PASSWORD = env_secret("PACS_TSA_PASSWORD")
# The certificates (PEM files, comma-separated) of the time-stamp authorities
# whose time stamps are accepted; any other TSA's token is refused, even when
# its certificate comes from a trusted CA. Default: the local TSA of PACS_TSA_DIR.
PACS_TSA_CERTIFICATES = [
    Path(p).resolve() for p in env_list("PACS_TSA_CERTIFICATES", str(PACS_TSA_DIR / "tsa.crt.pem"))
]
CELERY_BEAT_SCHEDULE.update(
    {
        "preservation-sweep": {
            "task": tasknames.STUDIES_PACKAGE_SWEEP,
            "schedule": env_float("PACS_PRESERVATION_SWEEP_SECONDS", 1800.0),
        },
        "preservation-volumes": {
            "task": tasknames.VOLUMES_CLOSE,
            "schedule": crontab(hour=env_int("PACS_PRESERVATION_VOLUME_HOUR", 1), minute=0),
        },
        "preservation-fixity": {
            "task": tasknames.PRESERVATION_FIXITY_AUDIT,
            "schedule": crontab(hour=env_int("PACS_PRESERVATION_FIXITY_HOUR", 3), minute=30),
        },
        "preservation-audit-seal": {
            "task": tasknames.AUDIT_SEAL,
            "schedule": PACS_AUDIT_SEAL_SECONDS,
        },
        "preservation-discard-propose": {
            "task": tasknames.DISCARD_PROPOSE,
            "schedule": crontab(day_of_week=1, hour=4, minute=0),
        },
    }
)

# --- Storage Commitment (PS3.4 J; archive.dicomnet.commitment) -------------------
# Answer on the N-ACTION's association when the node is still connected and the
# answer is ready at once; otherwise (or off) on a new association to the node.
PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION = env_bool("PACS_STORAGE_COMMITMENT_SAME_ASSOCIATION", True)
# Commit an instance only once a verified copy is in the long-term tier (two
# copies first), waiting for the lifecycle up to the maximum wait; what is still
# missing then fails (0x0110). Re-checked every RECHECK seconds.
PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM = env_bool("PACS_STORAGE_COMMITMENT_REQUIRE_LONG_TERM", False)
PACS_STORAGE_COMMITMENT_MAX_WAIT_SECONDS = env_float("PACS_STORAGE_COMMITMENT_MAX_WAIT_SECONDS", 86400.0)
PACS_STORAGE_COMMITMENT_RECHECK_SECONDS = env_float("PACS_STORAGE_COMMITMENT_RECHECK_SECONDS", 300.0)
# An answer the node does not take is sent again after RETRY seconds, doubling
# (at most an hour), this many times in all; then the request is undelivered.
PACS_STORAGE_COMMITMENT_RETRY_SECONDS = env_float("PACS_STORAGE_COMMITMENT_RETRY_SECONDS", 60.0)
PACS_STORAGE_COMMITMENT_DELIVERY_ATTEMPTS = env_int("PACS_STORAGE_COMMITMENT_DELIVERY_ATTEMPTS", 10)
if PACS_STORAGE_COMMITMENT_DELIVERY_ATTEMPTS < 1:
    raise ImproperlyConfigured("PACS_STORAGE_COMMITMENT_DELIVERY_ATTEMPTS must be at least 1")
CELERY_BEAT_SCHEDULE["storage-commitment-sweep"] = {
    "task": tasknames.STORAGE_COMMITMENT_SWEEP,
    "schedule": env_float("PACS_STORAGE_COMMITMENT_SWEEP_SECONDS", 300.0),
}

# --- Transcoding on the way out (issue 19, point 4) ---
# Seconds a transcoding (C-GET/C-MOVE to a peer that did not accept the stored
# transfer syntax, WADO-RS asking another one) may take in its render worker
# (archive.rendering.transcoding): a large multi-frame object takes longer than
# one rendered frame. Memory is PACS_RENDER_MEMORY_LIMIT's.
PACS_TRANSCODE_TIMEOUT = env_float("PACS_TRANSCODE_TIMEOUT", 120.0)

# --- IOCM rejection notes (archive.rejection) -------------------------------------------
# Days a rejected instance stays (withdrawn, invisible) before its purge, per rejection
# title (PS3.16 CID 7010 code), "default" for the others: PACS_REJECTION_RETENTION_DAYS
# as "113001=30,113039=0,default=30" overrides any of them. Preserved packages are never purged.
PACS_REJECTION_RETENTION_DAYS: dict[str, float] = {
    "113001": 30.0,  # Rejected for Quality Reasons
    "113037": 30.0,  # Rejected for Patient Safety Reasons
    "113038": 30.0,  # Incorrect Modality Worklist Entry
    "113039": 0.0,  # Data Retention Policy Expired: nothing left to keep
    "default": 30.0,
}
for _entry in env_list("PACS_REJECTION_RETENTION_DAYS"):
    _code, _sep, _days = _entry.partition("=")
    try:
        PACS_REJECTION_RETENTION_DAYS[_code.strip()] = float(_days)
        if not _sep or float(_days) < 0:
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(
            f"PACS_REJECTION_RETENTION_DAYS: {_entry!r} is not code=days (days a number, 0 or more)"
        ) from None
CELERY_BEAT_SCHEDULE["rejections-purge"] = {
    "task": tasknames.REJECTIONS_PURGE,
    "schedule": env_float("PACS_REJECTION_PURGE_SECONDS", 3600.0),
}
# The notices a lost message left unopened (preservation, portal): the day's notes, announced again.
CELERY_BEAT_SCHEDULE["rejections-announce-sweep"] = {
    "task": tasknames.REJECTIONS_ANNOUNCE_SWEEP,
    "schedule": env_float("PACS_REJECTION_PURGE_SECONDS", 3600.0),
}
# Expired API tokens and login sessions deleted, once a day at PACS_CREDENTIALS_PURGE_HOUR.
CELERY_BEAT_SCHEDULE["credentials-purge"] = {
    "task": tasknames.CREDENTIALS_PURGE,
    "schedule": crontab(hour=env_int("PACS_CREDENTIALS_PURGE_HOUR", 3), minute=30),
}

# --- research: anonymised exports for teaching and research -------------------------
# Anonymised exports for teaching and research (research.services) are written here.
PACS_RESEARCH_EXPORT_DIR = Path(env_str("PACS_RESEARCH_EXPORT_DIR", str(VAR_DIR / "research-exports"))).resolve()
CELERY_BEAT_SCHEDULE.update(
    {
        # An export whose message the broker lost, or whose worker died mid-zip.
        "research-export-sweep": {
            "task": tasknames.RESEARCH_EXPORT_BUILD_SWEEP,
            "schedule": env_float("PACS_RESEARCH_EXPORT_SWEEP_SECONDS", 300.0),
        },
    }
)
# --- Publication to the national FSE 2.0 gateway (fse_gateway, issue 20) ----------------------
# The gateway's base URL with its version (the test system:
# https://modipa-val.fse.salute.gov.it/govway/rest/in/FSE/gateway/v1); empty: nothing is published.
PACS_FSE_GATEWAY_URL = env_str("PACS_FSE_GATEWAY_URL")
# Where the study's KOS manifest goes (IHE XDS-I.b: the region's imaging document registry,
# not the national gateway, which takes CDA); empty: no manifest is sent.
PACS_FSE_MANIFEST_URL = env_str("PACS_FSE_MANIFEST_URL")
# The JWTs' signing key and its certificate (PEM files; the certificate goes in x5c and its
# CN after "auth:"/"integrity:" in iss). `manage.py fse_demo_credentials` makes a demo pair.
PACS_FSE_JWT_KEY_FILE = env_str("PACS_FSE_JWT_KEY_FILE")
PACS_FSE_JWT_KEY_PASSWORD = env_secret("PACS_FSE_JWT_KEY_PASSWORD")
PACS_FSE_JWT_CERT_FILE = env_str("PACS_FSE_JWT_CERT_FILE")
PACS_FSE_JWT_ISSUER = env_str("PACS_FSE_JWT_ISSUER")  # default: the certificate's CN
PACS_FSE_JWT_SUBJECT = env_str("PACS_FSE_JWT_SUBJECT")  # CF^^^&2.16.840.1.113883.2.9.4.3.2&ISO of who answers for it
PACS_FSE_JWT_AUDIENCE = env_str("PACS_FSE_JWT_AUDIENCE")  # default: PACS_FSE_GATEWAY_URL
PACS_FSE_JWT_LIFETIME_SECONDS = env_int("PACS_FSE_JWT_LIFETIME_SECONDS", 300)
PACS_FSE_ORGANIZATION_ID = env_str("PACS_FSE_ORGANIZATION_ID", "060")  # Friuli Venezia Giulia
PACS_FSE_ORGANIZATION = env_str("PACS_FSE_ORGANIZATION", "Regione Friuli Venezia Giulia")
# The producing facility as XON (name^^^^^&catalogue OID&ISO^^^^code), the locality claim.
PACS_FSE_LOCALITY = env_str(
    "PACS_FSE_LOCALITY", "ASUGI OSPEDALE DI CATTINARA^^^^^&2.16.840.1.113883.2.9.4.1.2&ISO^^^^060001"
)
PACS_FSE_SUBJECT_ROLE = env_str("PACS_FSE_SUBJECT_ROLE", "AAS")
PACS_FSE_APPLICATION_ID = env_str("PACS_FSE_APPLICATION_ID", "PACS-REGIONALE")
PACS_FSE_APPLICATION_VENDOR = env_str("PACS_FSE_APPLICATION_VENDOR", "Regione FVG")
PACS_FSE_APPLICATION_VERSION = env_str("PACS_FSE_APPLICATION_VERSION", "1.0")
PACS_FSE_FACILITY_TYPE = env_str("PACS_FSE_FACILITY_TYPE", "Ospedale")  # tipologiaStruttura
PACS_FSE_PRACTICE_SETTING = env_str("PACS_FSE_PRACTICE_SETTING", "AD_PSC103")  # Radiodiagnostica
PACS_FSE_REPOSITORY_OID = env_str("PACS_FSE_REPOSITORY_OID", "2.16.840.1.113883.2.9.2.60.4.5.1")
PACS_FSE_SUBMISSION_OID_ROOT = env_str("PACS_FSE_SUBMISSION_OID_ROOT", "2.16.840.1.113883.2.9.2.60.4.3")
PACS_FSE_DOCUMENT_OID_ROOT = env_str("PACS_FSE_DOCUMENT_OID_ROOT", "2.16.840.1.113883.2.9.2.60.4.4")
PACS_FSE_ACCESSION_OID = env_str("PACS_FSE_ACCESSION_OID", "2.16.840.1.113883.2.9.2.60.4.6")
PACS_FSE_TIMEOUT_SECONDS = env_float("PACS_FSE_TIMEOUT_SECONDS", 30.0)
# Retries: after a network error, a timeout, 408/425/429 or 5xx, the wait doubles from the base up to the cap.
PACS_FSE_RETRY_BASE_SECONDS = env_float("PACS_FSE_RETRY_BASE_SECONDS", 60.0)
PACS_FSE_RETRY_MAX_SECONDS = env_float("PACS_FSE_RETRY_MAX_SECONDS", 3600.0)
PACS_FSE_SENDING_STALE_SECONDS = env_float("PACS_FSE_SENDING_STALE_SECONDS", 600.0)
for _fse_name, _fse_value in (
    ("PACS_FSE_GATEWAY_URL", PACS_FSE_GATEWAY_URL),
    ("PACS_FSE_MANIFEST_URL", PACS_FSE_MANIFEST_URL),
):
    if _fse_value and not _fse_value.startswith(("https://", "http://")):
        raise ImproperlyConfigured(f"{_fse_name}: {_fse_value!r} is not an http(s) URL")
if PACS_FSE_GATEWAY_URL and not (PACS_FSE_JWT_KEY_FILE and PACS_FSE_JWT_CERT_FILE and PACS_FSE_JWT_SUBJECT):
    raise ImproperlyConfigured(
        "PACS_FSE_GATEWAY_URL needs PACS_FSE_JWT_KEY_FILE, PACS_FSE_JWT_CERT_FILE and PACS_FSE_JWT_SUBJECT"
    )
CELERY_BEAT_SCHEDULE["fse-outbox-sweep"] = {
    "task": tasknames.FSE_OUTBOX_SWEEP,
    "schedule": env_float("PACS_FSE_SWEEP_SECONDS", 120.0),
}

# --- Health and metrics (pacs.ops) ---------------------------------------------
# /health/live/ is always public; /health/ready/ is public (check names and fixed
# messages only) unless PACS_HEALTH_RESTRICTED puts it behind the metrics' gate.
PACS_HEALTH_RESTRICTED = env_bool("PACS_HEALTH_RESTRICTED", False)
# Off on a host where no Celery worker is expected to answer (a web-only box).
PACS_HEALTH_CELERY_WORKERS = env_bool("PACS_HEALTH_CELERY_WORKERS", True)
PACS_HEALTH_CELERY_TIMEOUT = env_float("PACS_HEALTH_CELERY_TIMEOUT", 1.0)
# The C-ECHO to the listener at PACS_DICOM_HOST:PACS_DICOM_PORT. The calling AE
# must be a node of the called facility, registered from this host's address.
PACS_HEALTH_DICOM_LISTENER = env_bool("PACS_HEALTH_DICOM_LISTENER", True)
PACS_HEALTH_DICOM_CALLING_AE = env_str("PACS_HEALTH_DICOM_CALLING_AE", "PACS_HEALTH")
PACS_HEALTH_DICOM_CALLED_AE = env_str("PACS_HEALTH_DICOM_CALLED_AE", "")  # default: the first facility's
PACS_HEALTH_DICOM_TIMEOUT = env_float("PACS_HEALTH_DICOM_TIMEOUT", 2.0)
# /metrics: these addresses or networks (empty: any) and, when the file is set,
# the bearer token it holds.
PACS_METRICS_ALLOWED_IPS = env_list("PACS_METRICS_ALLOWED_IPS", "127.0.0.1,::1")
PACS_METRICS_TOKEN_FILE = env_str("PACS_METRICS_TOKEN_FILE", "")
