"""Run Django's management commands: ``python -m django_hello <command>``.

The same as ``gateway manage <command>``: the frameworks' variables are derived from the
gateway's (``GATEWAY_DATA_DIR`` and the rest) by ``gateway.core.config.configure_apps``, so
both reach the same data directory and database as ``gateway serve``.
"""

import sys


def main() -> None:
    """Run a management command with this project's settings and the gateway's environment."""
    from gateway.core.config import Config, configure_apps

    try:
        configure_apps(Config.from_env())
    except ValueError as exc:
        sys.exit(f"python -m django_hello: error: {exc}")
    from django.core.management import execute_from_command_line

    execute_from_command_line([f"{sys.executable} -m django_hello", *sys.argv[1:]])


if __name__ == "__main__":
    main()
