"""The ASGI app (`create_app`) and its server (`serve_web`), for `kbot web` and `kbot serve`.

Read only by construction: every route is GET (HEAD); pages are rendered from
templates/web/*.html.j2 with autoescape on and StrictUndefined; every response carries a
Content-Security-Policy without any script source, so even markup that slipped through could
not run. Store reads happen in Starlette's worker threads, each with its own connection.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.bisect.record import load_bisection
from bot.config import TEMPLATE_DIR, Config
from bot.errors import InfraError, InputError
from bot.pipeline.jobs_cli import job_artifacts_dir
from bot.state import WEB_OUTCOMES, Store
from bot.vm.model import Outcome
from bot.web import files, queries, urls
from bot.web.bisect_view import bisection_view
from bot.web.svg import bar_chart, commit_line, sparkline

log = logging.getLogger(__name__)

WEB_TEMPLATES = TEMPLATE_DIR / "web"
STATIC_CSS = WEB_TEMPLATES / "style.css"
SECURITY_HEADERS = (
    (b"content-security-policy",
     b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
     b"base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(WEB_TEMPLATES)),
        autoescape=True,  # every value is text unless a view made it Markup (the SVG charts)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.globals.update(urls=urls, age=queries.age, when=queries.when)
    env.filters["short"] = lambda sha: str(sha)[:12]
    env.filters["pct"] = lambda v: f"{100.0 * float(v):.1f}%"
    env.filters["kib"] = lambda n: f"{int(n) / 1024:.1f} KiB"
    return env


class _Headers:
    """ASGI middleware: the security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + list(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with)


@dataclass
class Web:
    """The app's state: config, templates, one store connection per worker thread."""

    config: Config
    env: jinja2.Environment

    def __post_init__(self) -> None:
        self._local = threading.local()

    @property
    def store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = Store.in_state_dir(self.config.state_dir)
            self._local.store = store
        return store

    def render(self, template: str, status: int = 200, /, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(nav=template.removesuffix(".html.j2"),
                                                      **ctx)
        return HTMLResponse(html, status_code=status)

    def not_found(self, what: str) -> HTMLResponse:
        return self.render("error.html.j2", 404, title="Not found", message=what)


def _int(value: str | None, default: int, lo: int = 0, hi: int = 1 << 31) -> int | None:
    """A query/path integer in [lo, hi]; None when it is not one."""
    if value is None or value == "":
        return default
    if not value.isdigit():
        return None
    n = int(value)
    return n if lo <= n <= hi else None


def _download(path: Path, name: str) -> Response:
    """A whole file as an attachment, as text that no browser renders or sniffs."""
    return FileResponse(path, media_type="text/plain; charset=utf-8", filename=name,
                        content_disposition_type="attachment")


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def allowed_hosts(config: Config, bind_host: str = "127.0.0.1") -> tuple[str, ...]:
    """Host headers the app answers: loopback names, the bind address and `[report] web_url`'s
    host; any when bound to every address. A page of some other site that points its own
    name at 127.0.0.1 (DNS rebinding) then gets a 400, not the store's contents."""
    if bind_host in WILDCARD_HOSTS:
        return ("*",)
    web_host = urlsplit(config.report.web_url).hostname if config.report.web_url else None
    return tuple(dict.fromkeys(h for h in (*LOOPBACK_NAMES, bind_host, web_host) if h))


def create_app(config: Config, hosts: Sequence[str] | None = None) -> Starlette:
    """The read-only web app over the store of `config` (an ASGI app), answering requests for
    `hosts` (default: `allowed_hosts(config)`, loopback and web_url's host)."""
    web = Web(config, _environment())
    state_dir = config.state_dir

    def index(request: Request) -> Response:
        q = request.query_params
        page = _int(q.get("page"), 1, 1)
        outcome = q.get("outcome", "")
        if page is None or len(q.get("list", "")) > 200 or len(q.get("state", "")) > 50 or (
                outcome and outcome not in WEB_OUTCOMES):
            return web.render("error.html.j2", 400, title="Bad request",
                              message="bad filter or page")
        flt = queries.SeriesFilter(q.get("list", ""), q.get("state", ""), outcome, page)
        return web.render("series_list.html.j2", view=queries.series_list(web.store, flt))

    def series(request: Request) -> Response:
        sid = _int(request.path_params["series_id"], 0, 1)
        page = queries.series_page(web.store, sid) if sid else None
        if page is None:
            return web.not_found("no such series")
        return web.render("series.html.j2", page=page, web_url=config.report.web_url)

    def jobs(request: Request) -> Response:
        return web.render("jobs.html.j2", view=queries.jobs_status(web.store))

    def job(request: Request) -> Response:
        jid = _int(request.path_params["job_id"], 0, 1)
        page = queries.job_page(web.store, jid, state_dir) if jid else None
        if page is None:
            return web.not_found("no such job")
        listed, cut = files.list_folder(page.artifacts_dir)
        return web.render("job.html.j2", page=page, files=listed, files_cut=cut)

    def console(request: Request) -> Response:
        jid = _int(request.path_params["job_id"], 0, 1)
        run = _int(request.query_params.get("run"), 0, 0, 1000)
        key = request.query_params.get("boot", "")
        if not jid or run is None or not key.startswith("boot:") or len(key) > 300:
            return web.not_found("no such boot")
        try:
            boot = queries.boot(web.store, jid, key, run, state_dir)
        except InputError as exc:
            return web.render("error.html.j2", 500, title="Unreadable boot", message=str(exc))
        if boot is None:
            return web.not_found("no such boot")
        tail = files.read_tail(boot.console) if boot.console is not None else None
        if request.query_params.get("download") == "1":
            if boot.console is None:
                return web.not_found("the console log is no longer kept")
            return _download(boot.console, f"console-job{jid}-{boot.commit[:12]}-{run}.log")
        return web.render("console.html.j2", boot=boot, tail=tail, Outcome=Outcome)

    def build_file(request: Request) -> Response:
        jid = _int(request.path_params["job_id"], 0, 1)
        sha = request.path_params["sha"]
        which = request.path_params["which"]
        if not jid or not _SHA.match(sha) or which not in ("log", "config"):
            return web.not_found("no such build file")
        path = queries.build_file(web.store, jid, sha, which)
        if path is None or not files.regular_file(path):
            return web.not_found(f"the build {which} of {sha[:12]} is not kept")
        name = f"build-{sha[:12]}.log" if which == "log" else f"config-{sha[:12]}"
        if request.query_params.get("download") == "1":
            return _download(path, name)
        return web.render("file.html.j2", title=f"job {jid}: build {which} of {sha[:12]}",
                          back=urls.job_path(jid), tail=files.read_tail(path),
                          download=f"/jobs/{jid}/build/{sha}/{which}?download=1", name=name)

    def artifact(request: Request) -> Response:
        jid = _int(request.path_params["job_id"], 0, 1)
        rel = request.path_params["rel"]
        path = files.safe_join(job_artifacts_dir(state_dir, jid), rel) if jid else None
        if jid is None or path is None:
            return web.not_found("no such file in this job's artifacts")
        if not request.url.path.startswith(f"/jobs/{jid}/files/"):  # raw/, or the plain form
            return _download(path, Path(rel).name)
        return web.render("file.html.j2", title=f"job {jid}: {rel}", back=urls.job_path(jid),
                          tail=files.read_tail(path),
                          download=urls.artifact_path(jid, rel, raw=True), name=rel)

    def bisect(request: Request) -> Response:
        jid = _int(request.path_params["job_id"], 0, 1)
        job_row = web.store.get_job(jid) if jid else None
        if job_row is None or job_row.kind != "bisect":
            return web.not_found("no such bisection")
        step = web.store.web_step(job_row.id, "bisect")
        view = problem = None
        if step is not None:
            try:
                view = bisection_view(load_bisection(step.data))
            except InputError as exc:
                problem = f"the stored bisection cannot be read by this kbot: {exc}"
        charts: dict[str, Markup | None] = {}
        if view is not None:
            charts["line"] = commit_line(view.line, label="tested commits")
            charts["bars"] = (bar_chart(view.bars, target=view.stored.confidence,
                                        label="posterior over candidates")
                              if view.bars else None)
        return web.render("bisect.html.j2", job=job_row, view=view, problem=problem,
                          charts=charts, detail=job_row.detail)

    def tests(request: Request) -> Response:
        return web.render("tests.html.j2", names=web.store.web_test_names())

    def test_history(request: Request) -> Response:
        name = request.query_params.get("name", "")
        if not name or len(name) > 300:
            return web.not_found("no test named")
        hist = queries.test_history(web.store, name)
        if not hist.points:
            return web.not_found("no stored verdict names this test")
        return web.render("test.html.j2", hist=hist,
                          spark=sparkline(hist.spark, width=max(160, 14 * len(hist.spark)),
                                          label=f"pass rate of {name}"))

    def style(request: Request) -> Response:
        return FileResponse(STATIC_CSS, media_type="text/css",
                            headers={"cache-control": "max-age=300"})

    routes = [
        Route("/", index),
        Route("/series/{series_id}", series),
        Route("/jobs", jobs),
        Route("/jobs/{job_id}", job),
        Route("/jobs/{job_id}/console", console),
        Route("/jobs/{job_id}/build/{sha}/{which}", build_file),
        Route("/jobs/{job_id}/files/{rel:path}", artifact),
        Route("/jobs/{job_id}/raw/{rel:path}", artifact),
        # <url>/jobs/<id>/<file>: what reports link with `[report] artifacts_url` set to
        # this app's address (bot/pipeline/artifacts.py); after the routes above.
        Route("/jobs/{job_id}/{rel:path}", artifact),
        Route("/bisect/{job_id}", bisect),
        Route("/tests", tests),
        Route("/tests/history", test_history),
        Route("/static/style.css", style),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return web.not_found("no such page")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("web: %s failed", request.url.path)
        message = str(exc) if isinstance(exc, InfraError) else "internal error (see the log)"
        return web.render("error.html.j2", 500, title="Error", message=message)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 500: server_error})
    app.state.web = web
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts or allowed_hosts(config)),
                       www_redirect=False)
    app.add_middleware(_Headers)
    return app


# -- the server ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Served:
    host: str
    port: int  # the bound port (useful when 0 was asked for)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def serve_web(config: Config, host: str, port: int, stop_event: threading.Event,
              *, ready: Callable[[Served], None] | None = None,
              startup_timeout_s: float = 30.0) -> None:
    """Serve the app with uvicorn until `stop_event` is set, then stop it gracefully (open
    requests finish). Blocks: `kbot serve` runs it in a thread of its own. `ready` gets the
    bound address once it listens. Returns when the server has stopped; InfraError when it
    cannot listen or stops by itself."""
    import uvicorn

    app = create_app(config, allowed_hosts(config, host))
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=10, server_header=False))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # SystemExit when the port is taken
            failure.append(exc)

    thread = threading.Thread(target=run, name="kbot-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            why = f": {failure[0]!r}" if failure else ""
            raise InfraError(f"kbot web could not listen on {host}:{port}{why}")
        time.sleep(0.02)
    bound = port
    for s in server.servers:
        for sock in s.sockets:
            bound = int(sock.getsockname()[1])
    if ready is not None:
        ready(Served(host, bound))
    try:
        while not stop_event.wait(0.2):
            if not thread.is_alive():
                raise InfraError("kbot web stopped by itself (see the log)")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
