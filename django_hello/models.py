"""Models of the django_hello project."""

from django.db import models


class Greeting(models.Model):
    """How to say hello in one language, e.g. ``fr``: ``Bonjour``."""

    language = models.CharField(max_length=16, unique=True, help_text="A language code, e.g. fr.")
    text = models.CharField(max_length=100, help_text="The word of greeting, e.g. Bonjour.")

    class Meta:
        ordering = ["language"]

    def __str__(self) -> str:
        return f"{self.language}: {self.text}"
