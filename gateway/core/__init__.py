"""What the gateway decides about a request and adds to a response: the pipeline, its
configuration, the mount table and the gateway's own pages. No WSGI, ASGI, server or framework."""
