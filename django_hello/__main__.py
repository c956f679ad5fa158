"""Run Django's management commands: ``python -m django_hello <command>``."""

import os
import sys


def main() -> None:
    """Run a management command with this project's settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_hello.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line([f"{sys.executable} -m django_hello", *sys.argv[1:]])


if __name__ == "__main__":
    main()
