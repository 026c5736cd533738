"""Settings for the escrow back-office: everything configurable comes from the environment."""

from decimal import Decimal
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env is a convenience for developers; real deployments set the environment.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise environ.ImproperlyConfigured(
            "SECRET_KEY must be set (or DEBUG=true for a local run)."
        )
    SECRET_KEY = "insecure-local-development-key-do-not-deploy"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # The admin, with the back-office site (work queues on the index): escrowsite.admin.
    "escrowsite.apps.BackOfficeAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "wallets",
    "escrow",
    "payments",
    "notifications",
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

ROOT_URLCONF = "escrowsite.urls"

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

WSGI_APPLICATION = "escrowsite.wsgi.application"

# PostgreSQL is the real database (tests and production). SQLite under var/ is only the
# embedded default so that `make run` works on a machine with nothing installed.
(BASE_DIR / "var").mkdir(exist_ok=True)
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'escrow.sqlite3'}")
}
# ATOMIC_REQUESTS stays off: the webhook path needs its own, durable transactions.
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE makes concurrent writers queue on the lock instead of failing mid-way.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20}
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # The webhook hot path (escrowsite.sqlbatch) runs the same few statements for every
    # payment: psycopg prepares each after this many runs on a connection, so PostgreSQL
    # plans it once. Django's own queries use client-side binding and are never prepared.
    # "off" for a pooler that cannot keep prepared statements (PgBouncer before 1.21 in
    # transaction mode).
    _prepare = env.str("DB_PREPARE_THRESHOLD", default="5")
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
        None if _prepare.lower() == "off" else int(_prepare)
    )

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
STATIC_ROOT = BASE_DIR / "var" / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="escrow@localhost")

# --- Escrow business settings -------------------------------------------------------
# Fee: a percentage of the escrow amount with a floor; rounding lives in escrow.fees.
ESCROW_FEE_PERCENT = env.get_value("ESCROW_FEE_PERCENT", cast=Decimal, default="5")
ESCROW_MIN_FEE = env.get_value("ESCROW_MIN_FEE", cast=Decimal, default="1.00")
# How long a buyer has to pay, a seller to accept, and how long after delivery the
# funds auto-release to the seller.
ESCROW_PAYMENT_WINDOW_MINUTES = env.int("ESCROW_PAYMENT_WINDOW_MINUTES", default=60)
ESCROW_SELLER_RESPONSE_HOURS = env.int("ESCROW_SELLER_RESPONSE_HOURS", default=24)
ESCROW_DEFAULT_DELIVERY_HOURS = env.int("ESCROW_DEFAULT_DELIVERY_HOURS", default=24)
ESCROW_AUTO_RELEASE_HOURS = env.int("ESCROW_AUTO_RELEASE_HOURS", default=72)
# escrow_sweep warns the party who must act this long before a deadline (at most half
# the window, so a 60-minute payment window is warned about at 30 minutes); 0 disables.
ESCROW_WARN_BEFORE_HOURS = env.float("ESCROW_WARN_BEFORE_HOURS", default=6.0)

# --- Wallets --------------------------------------------------------------------------
# Staff wallet adjustments above this (absolute, USD) wait for a second staff member.
WALLET_ADJUSTMENT_APPROVAL_THRESHOLD = env.get_value(
    "WALLET_ADJUSTMENT_APPROVAL_THRESHOLD", cast=Decimal, default="100.00"
)
# ...counted together with the same staff member's own adjustments of the same customer
# over this many hours, so five adjustments of 100.00 cannot slip under a 100.00 threshold.
WALLET_ADJUSTMENT_APPROVAL_WINDOW_HOURS = env.float(
    "WALLET_ADJUSTMENT_APPROVAL_WINDOW_HOURS", default=24.0
)

# --- Payments -------------------------------------------------------------------------
# An underpayment of at most max(floor, percent of total due) still confirms the escrow.
PAYMENT_TOLERANCE_USD = env.get_value("PAYMENT_TOLERANCE_USD", cast=Decimal, default="1.00")
PAYMENT_TOLERANCE_PERCENT = env.get_value("PAYMENT_TOLERANCE_PERCENT", cast=Decimal, default="1")
# Comma-separated: several secrets are accepted during a rotation.
DYNOPAY_WEBHOOK_SECRET = env.list("DYNOPAY_WEBHOOK_SECRET", default=[])
DYNOPAY_API_BASE_URL = env.str("DYNOPAY_API_BASE_URL", default="http://127.0.0.1:8765")
DYNOPAY_API_KEY = env.str("DYNOPAY_API_KEY", default="")
DYNOPAY_TIMEOUT_SECONDS = env.float("DYNOPAY_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_MAX_BODY_BYTES = env.int("WEBHOOK_MAX_BODY_BYTES", default=256 * 1024)

# --- Maintenance ---------------------------------------------------------------------
# wallets_check reports signed receipts without a final outcome once they are this old.
WALLETS_CHECK_STALE_AFTER = env.str("WALLETS_CHECK_STALE_AFTER", default="5m")

# --- Notifications (outbox) -------------------------------------------------------------
NOTIFICATIONS_BOT_WEBHOOK_URL = env.str("NOTIFICATIONS_BOT_WEBHOOK_URL", default="")
NOTIFICATIONS_BOT_WEBHOOK_SECRET = env.str("NOTIFICATIONS_BOT_WEBHOOK_SECRET", default="")
NOTIFICATIONS_EMAIL_TO = env.list("NOTIFICATIONS_EMAIL_TO", default=[])
NOTIFICATIONS_MAX_ATTEMPTS = env.int("NOTIFICATIONS_MAX_ATTEMPTS", default=12)
# After a commit that wrote outbox rows, an in-process background thread delivers them
# at once; `notifications_dispatch` (cron or --loop) is the safety net either way.
NOTIFICATIONS_DISPATCH_AFTER_COMMIT = env.bool("NOTIFICATIONS_DISPATCH_AFTER_COMMIT", default=True)
# Tests only: run that after-commit dispatch in the committing thread instead.
NOTIFICATIONS_DISPATCH_EAGER = env.bool("NOTIFICATIONS_DISPATCH_EAGER", default=False)
# Per send, for the bot webhook and (unless EMAIL_TIMEOUT is set) SMTP.
NOTIFICATIONS_TIMEOUT_SECONDS = env.float("NOTIFICATIONS_TIMEOUT_SECONDS", default=10.0)
# A claimed row is invisible to other dispatchers for this long; must exceed a send.
NOTIFICATIONS_LEASE_SECONDS = env.int("NOTIFICATIONS_LEASE_SECONDS", default=300)
# Retry n waits base * 2**(n-1), capped.
NOTIFICATIONS_RETRY_BASE_SECONDS = env.int("NOTIFICATIONS_RETRY_BASE_SECONDS", default=30)
NOTIFICATIONS_RETRY_MAX_SECONDS = env.int("NOTIFICATIONS_RETRY_MAX_SECONDS", default=4 * 3600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # Django's own default console handler would print every django.* line twice.
    "loggers": {"django": {"handlers": [], "propagate": True}},
}
