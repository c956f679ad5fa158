"""django_hello's settings with the test views added to the URLconf.

    DJANGO_SETTINGS_MODULE=tests.apps.django_settings gateway serve
"""

from django_hello.settings import *  # noqa: F403

ROOT_URLCONF = "tests.apps.django_urls"
