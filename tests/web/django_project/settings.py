"""Settings for the test project: ``ATOMLIMIT_URL`` names the server, ``ATOMLIMIT_LIMIT``
the middleware's limit per minute, and ``ATOMLIMIT_MIDDLEWARE=0`` leaves the middleware out."""

from __future__ import annotations

import os

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "django_project.urls"
USE_TZ = True
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}
LOGGING_CONFIG = None

MIDDLEWARE = (
    ["atomlimit.django.RateLimitMiddleware"]
    if os.environ.get("ATOMLIMIT_MIDDLEWARE", "1") == "1"
    else []
)
ATOMLIMIT = {
    "URL": os.environ.get("ATOMLIMIT_URL", "redis://127.0.0.1:1/0"),
    "LIMITS": [f"{os.environ.get('ATOMLIMIT_LIMIT', '3')}/minute"],
    "EXCLUDE": [
        "/health",
        "/naive",
        "/decorated",
        "/decorated-async",
        "/stream",
        "/astream",
        "/flood",
    ],
}
