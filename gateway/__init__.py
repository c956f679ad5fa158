"""One process, two frameworks: Flask at ``/flask`` and Django at ``/django``.

``gateway.wsgi:application`` and ``gateway.asgi:application`` serve one mount table
(``gateway.core.mounts``); ``gateway serve`` runs it all with one command.
"""

__version__ = "0.1.0"
