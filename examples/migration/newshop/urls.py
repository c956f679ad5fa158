"""The port's pages at the legacy shop's URLs, then the rest of the site's Django project."""

from django.urls import include, path

from newshop import views

urlpatterns = [
    path("shop/items/<int:item_id>", views.item, name="item"),
    path("shop/cart", views.cart, name="cart"),
    path("", include("django_hello.urls")),
]
