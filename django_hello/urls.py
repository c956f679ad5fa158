"""URL configuration of the django_hello project."""

from django.contrib import admin
from django.urls import path

from django_hello import views

urlpatterns = [
    path("", views.hello, name="hello"),
    path("admin/", admin.site.urls),
]
