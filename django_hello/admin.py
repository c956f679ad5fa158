"""The Django admin for django_hello's models."""

from django.contrib import admin

from django_hello.models import Greeting


@admin.register(Greeting)
class GreetingAdmin(admin.ModelAdmin):
    list_display = ["language", "text"]
    search_fields = ["language", "text"]
