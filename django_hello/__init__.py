"""A small Django project: ``Hello, Django!`` at its root and the Django admin.

It is an ordinary Django project and knows nothing of the gateway that may mount it::

    python -m django_hello migrate
    python -m django_hello runserver
"""
