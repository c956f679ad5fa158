"""ASGI entry point of the django_hello project: ``application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_hello.settings")

application = get_asgi_application()
