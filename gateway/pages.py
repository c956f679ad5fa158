"""The gateway's own pages: an index of the mounts at ``/`` and a 404 for the rest."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from gateway import __version__
from gateway.mounts import MountTable
from gateway.types import Environ, StartResponse

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 3rem auto; max-width: 42rem;
       padding: 0 1rem; color: #222; line-height: 1.5; }}
h1 {{ font-size: 1.6rem; margin-bottom: .25rem; }}
p.lead {{ color: #555; margin-top: 0; }}
ul.mounts {{ list-style: none; padding: 0; }}
ul.mounts li {{ border: 1px solid #ddd; border-radius: 8px; padding: .75rem 1rem;
               margin: .5rem 0; display: flex; justify-content: space-between; gap: 1rem; }}
ul.mounts a {{ font-weight: 600; font-size: 1.1rem; }}
code {{ background: #f4f4f4; padding: .1rem .3rem; border-radius: 4px; }}
footer {{ color: #777; font-size: .85rem; margin-top: 2rem; }}
</style>
</head>
<body>
{body}
<footer>flask-django-gateway {version}</footer>
</body>
</html>
"""


class Pages:
    """WSGI app for every path no mount claims: the index at ``/``, else a 404."""

    def __init__(self, table: MountTable) -> None:
        self.table = table

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in {"GET", "HEAD"}:
            allow = ("Allow", "GET, HEAD, OPTIONS")
            if method == "OPTIONS":
                start_response("204 No Content", [allow])
                return []
            body405 = b"Method Not Allowed: the gateway's own pages answer GET and HEAD.\n"
            start_response("405 Method Not Allowed", [allow, ("Content-Type", "text/plain; charset=utf-8"),
                                                      ("Content-Length", str(len(body405)))])
            return [body405]
        if environ.get("PATH_INFO") in {"/", ""}:
            status, body = "200 OK", self.index(environ.get("SCRIPT_NAME", ""))
        else:
            status, body = "404 Not Found", self.not_found(environ.get("SCRIPT_NAME", ""))
        data = body.encode("utf-8")
        start_response(
            status,
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data)))],
        )
        return [b"" if method == "HEAD" else data]

    def index(self, script_name: str) -> str:
        """Render the list of mounts, with links under ``script_name``."""
        items = "\n".join(
            f'<li><a href="{escape(script_name + m.prefix)}/">{escape(m.prefix)}/</a>'
            f"<span>{escape(m.framework)} &middot; {m.interface.upper()}</span></li>"
            for m in self.table
        )
        body = (
            "<h1>Flask and Django, one process</h1>\n"
            '<p class="lead">This gateway serves each app below under its own path prefix.</p>\n'
            f'<ul class="mounts">\n{items}\n</ul>'
        )
        return _PAGE.format(title="Gateway", body=body, version=__version__)

    def not_found(self, script_name: str) -> str:
        """Render the 404 page, linking the index under ``script_name``."""
        body = (
            "<h1>Not Found</h1>\n"
            '<p class="lead">No app is mounted at this path. '
            f'See the <a href="{escape(script_name)}/">index</a> for what this server serves.</p>'
        )
        return _PAGE.format(title="Not Found", body=body, version=__version__)
