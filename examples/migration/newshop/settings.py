"""Settings for the site with the port in it: django_hello's, plus the ``newshop`` app.

Django is configured once per process, from ``DJANGO_SETTINGS_MODULE``, and the gateway
serves every Django app of the process from that one configuration: its own
``/django`` mount (django_hello's admin and pages) and the port's pages in the shared
URL space. So the port is added to the existing project, as a new Django app usually
is, and nothing else changes: same database, same secret key, same middleware.
``gateway.toml`` names them (``settings = "newshop.settings"``), and the gateway sets them.
"""

from django_hello.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "newshop"]  # noqa: F405
ROOT_URLCONF = "newshop.urls"  # the port's pages, then django_hello's
WSGI_APPLICATION = "newshop.wsgi.application"
