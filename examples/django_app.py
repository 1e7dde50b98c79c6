"""A single-file Django application limited two ways: every request per client, and one
view more tightly.

The middleware allows each client address 5 requests a minute on every
path but ``/health``; the async ``/search`` view also allows 2 a minute,
through the decorator, and reads what was decided from ``request.atomlimit``.
Allowed responses carry the RateLimit header fields; denied ones are 429s
with ``Retry-After`` and an ``application/problem+json`` body.

    pip install 'atomlimit[django]' uvicorn
    python examples/django_app.py --url redis://localhost:6379/0 --port 8002
    curl -i localhost:8002/search?q=redis

Run as a program it serves ASGI under uvicorn, where the async view is
charged through an AsyncLimiter and the sync one through a Limiter in
Django's thread. Imported, it is a WSGI application for gunicorn, its Redis
URL read from ``$ATOMLIMIT_URL``:

    ATOMLIMIT_URL=redis://localhost:6379/0 gunicorn --chdir examples django_app:application
"""

from __future__ import annotations

import argparse
import os

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from atomlimit import RateLimit
from atomlimit.django import limit

DEFAULT_URL = os.environ.get("ATOMLIMIT_URL", "redis://localhost:6379/0")


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello\n")


@limit("2/minute", group="search")
async def search(request: HttpRequest) -> JsonResponse:
    # The middleware's decision comes first, the decorator's second.
    per_client, searches = request.atomlimit.decisions
    return JsonResponse(
        {"q": request.GET.get("q", ""), "searches_left": searches.remaining,
         "requests_left": per_client.remaining}
    )  # fmt: skip


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n")


urlpatterns = [path("", home), path("search", search), path("health", health)]


def configure(url: str) -> None:
    """Django's settings for this one module: its views, the middleware and ATOMLIMIT."""
    settings.configure(
        SECRET_KEY="example-only",
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=["atomlimit.django.RateLimitMiddleware"],
        ATOMLIMIT={
            "URL": url,
            "LIMITS": [RateLimit.parse("5/minute", name="per-client")],
            "EXCLUDE": ["/health"],
        },
    )
    django.setup()


def main() -> None:
    import uvicorn
    from django.core.asgi import get_asgi_application

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    configure(args.url)
    # Django answers no lifespan events. The client is the peer that opened
    # the connection: uvicorn would otherwise take it from X-Forwarded-For
    # for local callers (docs/web.md, "Whose request is it").
    uvicorn.run(
        get_asgi_application(), host=args.host, port=args.port, log_level="warning",
        lifespan="off", proxy_headers=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
else:
    from django.core.wsgi import get_wsgi_application

    configure(DEFAULT_URL)
    application = get_wsgi_application()
