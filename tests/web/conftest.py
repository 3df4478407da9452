"""One web world (a store filled by a real pipeline run, plus a bisection) and one `kbot web`
server on a free loopback port, shared by the web tests of a session."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from bot.web.app import Served, serve_web
from tests.web.world import WebWorld, build_web_world


@pytest.fixture(scope="session")
def web_world(tmp_path_factory: pytest.TempPathFactory) -> WebWorld:
    return build_web_world(tmp_path_factory.mktemp("web-world"))


@pytest.fixture(scope="session")
def web_server(web_world: WebWorld) -> Iterator[str]:
    """The base URL of the app serving `web_world` (serve_web in a thread, as `kbot serve`
    runs it); stopped, and checked to have stopped, at the end."""
    stop = threading.Event()
    served: list[Served] = []
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve_web(web_world.config, "127.0.0.1", 0, stop,
                      ready=lambda s: (served.append(s), ready.set()))
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="web-test-server", daemon=True)
    thread.start()
    assert ready.wait(60), "kbot web did not start"
    assert not errors, errors
    yield served[0].url
    stop.set()
    thread.join(60)
    assert not thread.is_alive(), "kbot web did not stop"
    assert not errors, errors
