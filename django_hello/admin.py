"""The Django admin for django_hello's models."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpRequest, HttpResponseBase
from django.utils.translation import gettext as _

from django_hello.models import Greeting

logger = logging.getLogger("django_hello.admin")

#: Lookups the change list's query string may not use: the database compiles the pattern.
REFUSED_LOOKUPS = frozenset({"regex", "iregex"})


class SafeModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """A ModelAdmin that answers malformed staff requests with a 4xx or a message, not a 500.

    Use it as the base of your own ModelAdmins (or copy its three methods); it changes
    nothing for well-formed requests. Each refusal is one WARNING line in the log, no
    traceback. The admin pages of other apps registered before this module is imported
    (Django's users and groups, django-axes' attempts and logs) get the same checks from
    :func:`harden_registered`; for an app listed after ``django_hello`` in
    ``INSTALLED_APPS``, use this class or call ``harden_registered()`` in its admin
    module. It works through Django's own hooks:

    - :meth:`lookup_allowed` refuses, from the change list's query string, the
      ``regex`` and ``iregex`` lookups (``?language__regex=(``): the database compiles
      the pattern, so a bad one is a database error (a 500 on PostgreSQL, a 503 on
      SQLite) and a pathological one keeps the database busy. It also refuses values
      with a NUL character, which PostgreSQL rejects in text. Django answers the refusal
      (``DisallowedModelAdminLookup``) with a 400; ``settings.LOGGING`` makes its log
      record one line.
    - :meth:`get_search_results` refuses a search term (``?q=``) with a NUL character,
      the same way (400).
    - :meth:`response_action` checks every selected id (``_selected_action``) with the
      primary key field's ``to_python`` and validators before an action runs. If any is
      not a valid id (``abc`` for an integer key, a number out of range, a NUL), the
      action does not run at all: the admin shows its usual "Items must be selected"
      message and redirects to the change list (302), where Django would have put the
      value in a query and failed with a 500.

    A field literally named ``regex`` or ``iregex`` can still be filtered on by its own
    name alone; to offer regular-expression search to staff on purpose, override
    ``lookup_allowed`` and validate the pattern yourself.
    """

    def lookup_allowed(self, lookup: str, value: Any, request: HttpRequest | None = None) -> bool:
        parts = lookup.split("__")
        if len(parts) > 1 and parts[-1] in REFUSED_LOOKUPS:
            return False
        if isinstance(value, str) and "\x00" in value:
            return False
        return bool(super().lookup_allowed(lookup, value, request))

    def get_search_results(self, request: HttpRequest, queryset: models.QuerySet[Any], search_term: str
                           ) -> tuple[models.QuerySet[Any], bool]:
        if "\x00" in search_term:
            raise DisallowedModelAdminLookup("Searching for a NUL character not allowed")
        return super().get_search_results(request, queryset, search_term)  # type: ignore[no-any-return]

    def response_action(self, request: HttpRequest, queryset: models.QuerySet[Any]) -> HttpResponseBase | None:
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if invalid := invalid_pks(self.model, selected):
            logger.warning("Admin action on %s refused: %d of %d selected ids are not valid ids, e.g. %r.",
                           self.opts.label, len(invalid), len(selected), invalid[0][:40])
            # Django's own words (and translations) for an action with nothing selected.
            self.message_user(request, _("Items must be selected in order to perform actions on them. "
                                         "No items have been changed."), messages.WARNING)
            return None  # the change list redirects to itself
        return super().response_action(request, queryset)  # type: ignore[no-any-return]


def invalid_pks(model: type[models.Model], values: Iterable[str]) -> list[str]:
    """The values that are not a valid primary key of ``model`` (as a form field would judge)."""
    pk = model._meta.pk
    assert pk is not None
    invalid = []
    for value in values:
        try:
            if "\x00" in value:
                raise ValidationError("NUL character")
            pk.run_validators(pk.to_python(value))
        except ValidationError:
            invalid.append(value)
    return invalid


def harden_registered(site: admin.AdminSite = admin.site) -> None:
    """Give every ModelAdmin registered on ``site`` so far :class:`SafeModelAdmin`'s checks.

    Each is registered again as a subclass of both (``UserAdmin`` becomes
    ``SafeUserAdmin``), so its own behaviour, such as ``UserAdmin`` refusing lookups on
    passwords, is kept.
    """
    for model, model_admin in list(site._registry.items()):
        cls = type(model_admin)
        if isinstance(model_admin, SafeModelAdmin):
            continue
        safe = type(f"Safe{cls.__name__}", (SafeModelAdmin, cls), {"__module__": __name__, "__doc__": cls.__doc__})
        site.unregister(model)
        site.register(model, safe)


@admin.register(Greeting)
class GreetingAdmin(SafeModelAdmin):
    list_display = ["language", "text"]
    search_fields = ["language", "text"]


# Django's users and groups, and django-axes' pages, had the same 500s.
harden_registered()
