"""The new shop: the Django port of the legacy shop's item page and cart page.

An ordinary Django app (views, URLs, templates) in a settings module of its own,
``newshop.settings``, which is the site's Django project (``django_hello``) with this app
added: see the example's README for why the port joins that project rather than start
another one.
"""
