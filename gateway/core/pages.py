"""The gateway's own pages: an index of the mounts at ``/`` and a 404 for the rest."""

from __future__ import annotations

from html import escape

from gateway import __version__
from gateway.core.mounts import MountTable
from gateway.replies import Reply, plain

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
ul.mounts, ul.links {{ list-style: none; padding: 0; }}
ul.mounts li, ul.links li {{ border: 1px solid #ddd; border-radius: 8px; padding: .75rem 1rem;
               margin: .5rem 0; display: flex; justify-content: space-between; gap: 1rem; }}
ul.mounts a, ul.links a {{ font-weight: 600; font-size: 1.1rem; }}
h2 {{ font-size: 1.2rem; margin-top: 2rem; }}
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
    """The gateway's own pages, for every path no mount claims: the index at ``/``, else a 404."""

    def __init__(self, table: MountTable, *, metrics: bool = False) -> None:
        self.table = table
        self.metrics = metrics

    def reply(self, method: str, path: str, root: str) -> Reply:
        """Answer ``method`` on ``path``, linking the mounts under ``root``."""
        if method not in {"GET", "HEAD"}:
            allow = ("Allow", "GET, HEAD, OPTIONS")
            if method == "OPTIONS":
                return Reply(204, (allow,), b"")
            return plain(405, "Method Not Allowed: the gateway's own pages answer GET and HEAD.\n", allow,
                         reason="method_not_allowed")
        if path in {"/", ""}:
            status, page = 200, self.index(root)
        else:
            status, page = 404, self.not_found(root)
        data = page.encode("utf-8")
        headers = (("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data))))
        return Reply(status, headers, b"" if method == "HEAD" else data, "no_mount" if status == 404 else "")

    def index(self, script_name: str) -> str:
        """Render what this gateway serves: its mounts, its route rules and its own pages,
        with links under ``script_name``."""
        hidden = self.table.hidden()
        items = "\n".join(
            f'<li><a href="{escape(script_name + m.prefix)}/">{escape(m.prefix)}/</a>'
            f"<span>{escape(m.framework)} &middot; {m.interface.upper()}"
            + (f" &middot; hidden in part by the rule <code>{escape(hidden[m.prefix])}</code>"
               if m.prefix in hidden else "")
            + "</span></li>"
            for m in self.table
        ) or "<li>No prefix mounts.</li>"
        body = (
            "<h1>Flask and Django, one process</h1>\n"
            '<p class="lead">This gateway serves each app below under its own path prefix.</p>\n'
            f'<ul class="mounts">\n{items}\n</ul>'
        )
        rules = self.table.route_table
        if rules:
            names = {m.prefix: m.target for m in self.table.routes.values()}
            listed = "\n".join(f"<li><code>{escape(spec.rule)}</code><span>{escape(names.get(spec.key, ''))}"
                                "</span></li>" for spec in rules.specs.values())
            body += ("\n<h2>Route rules</h2>\n<p>These paths of the root URL space go to the apps named, "
                     "before the prefix mounts.</p>\n"
                     f'<ul class="links">\n{listed}\n</ul>')
        own = [("/healthz", "liveness"), ("/readyz", "readiness")]
        if rules:
            own.append(("/_gateway/", "the migration page (loopback and trusted proxies)"))
        if self.metrics:
            own.append(("/metrics", "Prometheus metrics (loopback and trusted proxies)"))
        pages = "\n".join(f'<li><a href="{escape(script_name + path)}">{escape(path)}</a><span>{escape(what)}'
                           "</span></li>" for path, what in own)
        body += f'\n<h2>The gateway\'s own pages</h2>\n<ul class="links">\n{pages}\n</ul>'
        return _PAGE.format(title="Gateway", body=body, version=__version__)

    def not_found(self, script_name: str) -> str:
        """Render the 404 page, linking the index under ``script_name``."""
        body = (
            "<h1>Not Found</h1>\n"
            '<p class="lead">No app is mounted at this path. '
            f'See the <a href="{escape(script_name)}/">index</a> for what this server serves.</p>'
        )
        return _PAGE.format(title="Not Found", body=body, version=__version__)
