"""Management commands of the django_hello project."""
