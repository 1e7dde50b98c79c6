"""One Django view, three ways, for bench/django_overhead.py: served by gunicorn as
``django_site:application`` with ``$BENCH_LIMITER`` set to ``none``, ``atomlimit``
or ``django-ratelimit`` and ``$ATOMLIMIT_URL`` naming the Redis server.

Both limiters charge the client's address, one request at a time, against a
limit the run never reaches, so every request takes the allowed path.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path

URL = os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0")
LIMITER = os.environ.get("BENCH_LIMITER", "none")
RATE = "100000000/m"  # django-ratelimit's spelling; never reached

settings.configure(
    SECRET_KEY="bench-only",
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": URL}},
    ATOMLIMIT={"URL": URL},
)


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello")


if LIMITER == "atomlimit":
    from atomlimit.django import limit

    view = limit("100000000/minute", group="bench")(hello)
elif LIMITER == "django-ratelimit":
    from django_ratelimit.decorators import ratelimit

    view = ratelimit(key="ip", rate=RATE, block=True)(hello)
else:
    view = hello

urlpatterns = [path("", view)]
application = get_wsgi_application()
