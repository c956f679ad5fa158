"""Serving: the ``gateway`` command, the server runners, uvicorn's protocol, the builder
and the frameworks' set-up."""
