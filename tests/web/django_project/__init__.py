"""A minimal Django project for tests/web/test_django.py, and for serving under gunicorn
and uvicorn: its settings read the server's URL and the limits from the environment."""
