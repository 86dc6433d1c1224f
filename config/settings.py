"""Airlock settings: one module, driven by environment variables (see README, Configuration).

Without any variables set this is the embedded default of `make run` and the test suite:
SQLite and a filesystem Celery broker under var/, local bubblewrap sandboxes, files under
var/media. Production sets DATABASE_URL, CELERY_BROKER_URL, SANDBOX_BACKEND=e2b, STORAGE_BACKEND=s3.
"""

from __future__ import annotations

import os
import secrets
from decimal import Decimal
from pathlib import Path

import django_stubs_ext

from config.env import (
    env_bool,
    env_cache,
    env_choice,
    env_db,
    env_decimal,
    env_email,
    env_int,
    env_list,
    env_str,
)
from config.logs import logging_config

# Lets Django's generic classes take type parameters at runtime (ModelAdmin[Model], …).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("AIRLOCK_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _local_secret_key() -> str:
    """A key kept under var/ so the embedded default needs no configuration."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "") or _local_secret_key()
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", [])
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
DEPLOY_ENV = env_str("DEPLOY_ENV", "local")

# Behind TLS in production: one switch for redirects, secure cookies and HSTS.
HTTPS_ONLY = env_bool("HTTPS_ONLY", False)
SECURE_SSL_REDIRECT = HTTPS_ONLY
SESSION_COOKIE_SECURE = HTTPS_ONLY
CSRF_COOKIE_SECURE = HTTPS_ONLY
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS_ONLY else 0, min_value=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS_ONLY
SECURE_HSTS_PRELOAD = HTTPS_ONLY
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from here: the docs work offline
    "django_fsm_log",
    "workspaces",
    "sandboxes",
    "artifacts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
            ],
        },
    },
]

DATABASES = {"default": env_db("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process, the worker and beat share the file: WAL lets readers and one writer
    # work at once, IMMEDIATE transactions take the write lock up front instead of failing
    # halfway with "database is locked".
    # Tests keep their database in a file, so real worker processes can share it; one per
    # test process, so concurrent test runs do not meet.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
DATABASES["default"]["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 60, min_value=0)
# The web process (config/asgi.py) shares PostgreSQL connections through a pool of at most
# this many (0: none, a connection per request). Workers keep persistent connections.
WEB_DATABASE_POOL_SIZE = env_int("WEB_DATABASE_POOL_SIZE", 20, min_value=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# The web process (config/asgi.py) serves /static/ itself unless a proxy serves STATIC_ROOT.
SERVE_STATIC = env_bool("SERVE_STATIC", True)
MEDIA_ROOT = VAR_DIR / "media"

# Transitions are events on the trail (workspaces.events): one row, written by one helper.
DJANGO_FSM_LOG_STORAGE_METHOD = "workspaces.events.TrailBackend"

# The cache every process shares: the login throttle (AUTH_THROTTLE_RATE) counts here, so a
# limit holds across web processes. A file cache under var/ by default (one machine: web,
# worker and beat see the same files); Redis in production (`redis://redis:6379/1`).
CACHES = {"default": env_cache("CACHE_URL", f"filecache://{VAR_DIR / 'cache'}")}

# --- Limits -------------------------------------------------------------------------------
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 1024 * 1024, min_value=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 100 * 1024 * 1024, min_value=1)
ARTIFACT_MAX_BYTES = env_int("ARTIFACT_MAX_BYTES", 1024 * 1024 * 1024, min_value=1)
EXEC_MAX_OUTPUT_BYTES = env_int("EXEC_MAX_OUTPUT_BYTES", 1024 * 1024, min_value=1024)
WORKSPACE_MAX_ACTIVE_RUNS = env_int("WORKSPACE_MAX_ACTIVE_RUNS", 10, min_value=1)
ALLOW_SELF_REVIEW = env_bool("ALLOW_SELF_REVIEW", False)
# Review (SPEC §13): the size over which an artifact carries the `large` signal, and how often
# beat expires artifacts pending longer than their workspace's policy allows.
ARTIFACT_LARGE_BYTES = env_int("ARTIFACT_LARGE_BYTES", 5 * 1024 * 1024, min_value=1)
ARTIFACT_EXPIRY_INTERVAL_S = env_int("ARTIFACT_EXPIRY_INTERVAL_S", 300, min_value=1)

# --- API ----------------------------------------------------------------------------------
# How long authentication may reuse an API key it looked up (workspaces/keycache.py; 0: look
# it up on every request). Only in a cache every process shares (CACHE_URL's Redis or file
# cache, not a process's memory): revoking a key, deleting it or deactivating its creator
# forgets it at once in every process.
API_KEY_CACHE_S = env_int("API_KEY_CACHE_S", 60, min_value=0)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "workspaces.authentication.ApiKeyAuthentication",
        "workspaces.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["config.api.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "config.api.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "DEFAULT_METADATA_CLASS": "config.api.Metadata",  # OPTIONS
    "DEFAULT_SCHEMA_CLASS": "config.schema.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"auth": env_str("AUTH_THROTTLE_RATE", "30/min")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Airlock API",
    "DESCRIPTION": "Run agent-written code in sandboxes; every file it makes waits for review.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "MembershipRoleEnum": "workspaces.models.Role",
        "ApiKeyRoleEnum": "workspaces.models.ApiKeyRole",
        "ArtifactTypeEnum": "artifacts.models.ArtifactType",
        "RunStatusEnum": "sandboxes.models.RunStatus",
        "CommandStatusEnum": "sandboxes.models.CommandStatus",
        "EventTypeEnum": "workspaces.models.EventType",
        "DeliveryStatusEnum": "workspaces.models.DeliveryStatus",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.schema.add_error_responses",
    ],
}

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = Path(env_str("CELERY_FILESYSTEM_DIR", str(VAR_DIR / "celery")))
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # default: ./control in the cwd
        "store_processed": False,
        "polling_interval": 0.05,  # seconds; the default 1 s would add a second to every task
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * 60 * 60}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Workers keep their database connection from task to task as a web process does from request
# to request (CONN_MAX_AGE, CONN_HEALTH_CHECKS: config/celery.py); Celery's own fixup, which
# closes it around every task by default, only recycles it after this many tasks (0: around
# every task, Celery's default).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, min_value=0)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Sandboxes ----------------------------------------------------------------------------
SANDBOX_BACKEND = env_choice("SANDBOX_BACKEND", ("local", "e2b"), "local")
SANDBOX_LOCAL_ROOT = Path(env_str("SANDBOX_LOCAL_ROOT", str(VAR_DIR / "sandboxes")))
# Per sandbox, all its processes together (cgroups; a loop-mounted image for the disk).
SANDBOX_LOCAL_MEMORY_MB = env_int("SANDBOX_LOCAL_MEMORY_MB", 1024, min_value=64)
SANDBOX_LOCAL_MAX_PROCESSES = env_int("SANDBOX_LOCAL_MAX_PROCESSES", 256, min_value=8)
# CPUs as a decimal (0.5 is half a core); 0 is refused by the backend when it starts.
SANDBOX_LOCAL_CPUS = float(env_decimal("SANDBOX_LOCAL_CPUS", Decimal("1")))
SANDBOX_LOCAL_DISK_MB = env_int("SANDBOX_LOCAL_DISK_MB", 2048, min_value=16)
# Per process.
SANDBOX_LOCAL_CPU_SECONDS = env_int("SANDBOX_LOCAL_CPU_SECONDS", 600, min_value=1)
SANDBOX_LOCAL_MAX_FILE_MB = env_int("SANDBOX_LOCAL_MAX_FILE_MB", 2048, min_value=1)
SANDBOX_LOCAL_TMP_MB = env_int("SANDBOX_LOCAL_TMP_MB", 512, min_value=1)
# Refuse to create sandboxes unless every limit above (and seccomp) is enforced.
SANDBOX_LOCAL_REQUIRE_LIMITS = env_bool("SANDBOX_LOCAL_REQUIRE_LIMITS", False)
# The cgroup, in each hierarchy, under which every sandbox gets its own.
SANDBOX_LOCAL_CGROUP = env_str("SANDBOX_LOCAL_CGROUP", "airlock")
SANDBOX_LOCAL_BWRAP = env_str("SANDBOX_LOCAL_BWRAP", "bwrap")
# The host uid/gid sandboxes run as when the worker is root (default: nobody/nogroup).
SANDBOX_LOCAL_UID = env_int("SANDBOX_LOCAL_UID", None, min_value=1)
SANDBOX_LOCAL_GID = env_int("SANDBOX_LOCAL_GID", None, min_value=1)
E2B_API_KEY = env_str("E2B_API_KEY", "")
E2B_API_URL = env_str("E2B_API_URL", "") or None
E2B_SANDBOX_URL = env_str("E2B_SANDBOX_URL", "") or None
E2B_DOMAIN = env_str("E2B_DOMAIN", "e2b.app")
E2B_TEMPLATE = env_str("E2B_TEMPLATE", "base")
E2B_REQUEST_TIMEOUT_S = env_int("E2B_REQUEST_TIMEOUT_S", 30, min_value=1)
SANDBOX_BOOT_TIMEOUT_S = env_int("SANDBOX_BOOT_TIMEOUT_S", 300, min_value=1)
SANDBOX_DEFAULT_MAX_DURATION_MS = env_int(
    "SANDBOX_DEFAULT_MAX_DURATION_MS", 3_600_000, min_value=1000
)
SANDBOX_DEFAULT_IDLE_TIMEOUT_MS = env_int(
    "SANDBOX_DEFAULT_IDLE_TIMEOUT_MS", 900_000, min_value=1000
)
# SPEC §15: what the sweep does to an idle run that does not say (kill: end it; pause: pause
# its sandbox until the next call), and whether a run that does not say may reach the internet.
SANDBOX_DEFAULT_ON_IDLE = env_choice("SANDBOX_DEFAULT_ON_IDLE", ("kill", "pause"), "kill")
SANDBOX_DEFAULT_INTERNET = env_bool("SANDBOX_DEFAULT_INTERNET", False)
SANDBOX_SWEEP_INTERVAL_S = env_int("SANDBOX_SWEEP_INTERVAL_S", 30, min_value=1)
SANDBOX_RECONCILE_INTERVAL_S = env_int("SANDBOX_RECONCILE_INTERVAL_S", 300, min_value=1)
# How often beat looks at running background commands: how soon their end, their timeout_s
# and the end of their run are noticed when nobody reads them.
SANDBOX_COMMAND_CHECK_INTERVAL_S = env_int("SANDBOX_COMMAND_CHECK_INTERVAL_S", 10, min_value=1)
SANDBOX_SWEEP_CONCURRENCY = env_int("SANDBOX_SWEEP_CONCURRENCY", 16, min_value=1)
# The command job's lease, renewed every third of it by its worker: a job whose lease lapsed
# lost its worker, and the next sweep fails its run worker_lost. At most the sweep interval,
# so a dead worker's job is found within two sweep intervals.
SANDBOX_JOB_LEASE_S = env_int("SANDBOX_JOB_LEASE_S", 30, min_value=3)
SANDBOX_KEEPALIVE_MIN_S = env_int("SANDBOX_KEEPALIVE_MIN_S", 30, min_value=0)
# E2B's published per-second prices: per vCPU, and per GiB of memory.
SANDBOX_PRICE_VCPU_S = env_decimal("SANDBOX_PRICE_VCPU_S", Decimal("0.000014"))
SANDBOX_PRICE_GIB_S = env_decimal("SANDBOX_PRICE_GIB_S", Decimal("0.0000045"))

# --- Storage ------------------------------------------------------------------------------
STORAGE_BACKEND = env_choice("STORAGE_BACKEND", ("filesystem", "s3"), "filesystem")
if STORAGE_BACKEND == "s3":
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env_str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env_str("AWS_S3_ENDPOINT_URL", "") or None,
            "region_name": env_str("AWS_S3_REGION_NAME", "") or None,
            "access_key": env_str("AWS_ACCESS_KEY_ID", "") or None,
            "secret_key": env_str("AWS_SECRET_ACCESS_KEY", "") or None,
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": None},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- Webhooks, notifications (SPEC §11) ----------------------------------------------------
# Private, loopback, link-local and metadata targets are refused at create and at send unless
# this is set (tests, self-hosted receivers on the same network).
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
WEBHOOK_ALLOW_HTTP = env_bool("WEBHOOK_ALLOW_HTTP", False)
WEBHOOK_TIMEOUT_S = env_int("WEBHOOK_TIMEOUT_S", 10, min_value=1)
WEBHOOK_DISABLE_AFTER_H = env_int("WEBHOOK_DISABLE_AFTER_H", 120, min_value=1)
WEBHOOK_SWEEP_INTERVAL_S = env_int("WEBHOOK_SWEEP_INTERVAL_S", 10, min_value=1)

# The console backend unless EMAIL_URL names a server (smtp+tls://user:pass@host:587).
globals().update(env_email("EMAIL_URL", "consolemail://"))  # EMAIL_BACKEND, EMAIL_HOST, …
DEFAULT_FROM_EMAIL = env_str("EMAIL_FROM", "Airlock <airlock@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Where people reach this deployment: the links in review emails.
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

# --- Logging ------------------------------------------------------------------------------
LOG_FORMAT = env_choice("LOG_FORMAT", ("plain", "json"), "plain")
LOGGING = logging_config(log_format=LOG_FORMAT, level=env_str("LOG_LEVEL", "INFO"))

# --- Metrics ------------------------------------------------------------------------------
# GET /metrics answers (Prometheus text format) only to `Authorization: Bearer <this>`;
# unset, it is a 404 for everyone.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
