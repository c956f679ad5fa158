"""The port's WSGI application, as gateway.toml names it: ``newshop.wsgi:application``."""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newshop.settings")

application = get_wsgi_application()

if "newshop" not in settings.INSTALLED_APPS:
    # Django was configured before this module was imported, from other settings
    # (django_hello's, say): the port's pages would all fail.
    raise RuntimeError(f"newshop needs DJANGO_SETTINGS_MODULE=newshop.settings, not {settings.SETTINGS_MODULE} "
                       "(Django is configured once per process): start the example with examples/migration/run.sh")
