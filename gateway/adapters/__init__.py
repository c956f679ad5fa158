"""The WSGI and ASGI sides around the core: they translate a request into its head and
the decision back into the protocol, and run the apps (the bridge, lifespan, health probes)."""
