"""WSGI entry point of the django_hello project: ``application``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_hello.settings")

application = get_wsgi_application()
