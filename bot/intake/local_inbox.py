"""A real, throwaway public-inbox archive on loopback (Debian's public-inbox 1.9).

Used by the integration tests and by `kbot demo`: `public-inbox-init -V2` one inbox per list in
a directory of its own, `public-inbox-mda --no-precheck` per message (it writes git, over.sqlite3
and the Xapian index synchronously), and `public-inbox-httpd -W0` on a free 127.0.0.1 port.

Search freshness, measured here: mda has committed the Xapian index when it exits, but a running
httpd keeps its Xapian handle open and only drops it on a 30 s cleanup timer, so `?q=` searches
(x=A, x=m) miss new mail for up to ~30 s while new.atom (over.sqlite3) already shows it. That is
the "search lags by ~30 s" seen on lore too. SIGHUP makes httpd reload its config and reopen
every inbox: `refresh()` sends it and waits until a search finds the newest message, so tests
need no sleeps. public-inbox-index is not needed (mda indexes).
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import requests

from bot import USER_AGENT, proc
from bot.errors import InfraError, InputError
from bot.intake.client import quote_msgid, split_mboxrd

DOMAIN = "vger.kernel.org"
CMD_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 20.0
MAX_LIFETIME_S = 3600.0
MAX_MBOX_BYTES = 256 * 1024 * 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _split_mbox(data: bytes) -> list[bytes]:
    # The same mboxrd splitter the client uses on archive streams: mboxes given here are
    # what public-inbox serves (t.mbox.gz, x=m), so they round-trip exactly.
    return list(split_mboxrd(iter((data,))))


class LocalInbox:
    """Inboxes for `lists` under `root`, served by one public-inbox-httpd once started."""

    def __init__(self, root: Path, lists: Sequence[str] = ("kvm",), *, domain: str = DOMAIN):
        if not lists:
            raise ValueError("LocalInbox needs at least one list")
        self.root = root
        self.lists = tuple(lists)
        self.domain = domain
        self.config_path = root / "pi-config"
        self.port: int | None = None
        self._server: proc.Background | None = None
        self._last_msgid: dict[str, str] = {}
        self._created = False

    # -- setup -----------------------------------------------------------------------------

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # HOME inside root: public-inbox and git must not read or write the user's dotfiles.
        env = proc.clean_env({"PI_CONFIG": str(self.config_path), "HOME": str(self.root)})
        if extra:
            env.update(extra)
        return env

    def address(self, list_name: str) -> str:
        return f"{list_name}@{self.domain}"

    def create(self) -> LocalInbox:
        """public-inbox-init -V2 each list (idempotent)."""
        if self._created:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        for name in self.lists:
            inbox_dir = self.root / name
            if (inbox_dir / "msgmap.sqlite3").exists():
                continue
            proc.run(
                ["public-inbox-init", "-V2", "-L", "medium", name, inbox_dir,
                 f"http://127.0.0.1/{name}", self.address(name)],
                timeout=CMD_TIMEOUT_S, env=self._env(), cwd=self.root, check=True,
            )
        # No SpamAssassin here: mda would otherwise call spamc and refuse every message.
        proc.run(
            ["git", "config", "-f", self.config_path, "publicinboxmda.spamcheck", "none"],
            timeout=CMD_TIMEOUT_S, env=self._env(), cwd=self.root, check=True,
        )
        self._created = True
        return self

    # -- mail ------------------------------------------------------------------------------

    def deliver(self, raw: bytes, list_name: str | None = None, *, refresh: bool = True) -> None:
        """Deliver one raw message (a leading mbox From_ line is fine) with public-inbox-mda.

        With `refresh` and a running server, returns once the server's search sees it.
        """
        name = list_name or self.lists[0]
        if name not in self.lists:
            raise ValueError(f"no list {name!r} in this LocalInbox ({', '.join(self.lists)})")
        self.create()
        result = proc.run(
            ["public-inbox-mda", "--no-precheck"],
            input=raw, timeout=CMD_TIMEOUT_S, cwd=self.root,
            env=self._env({"ORIGINAL_RECIPIENT": self.address(name)}),
        )
        if not result.ok:
            raise InfraError(f"public-inbox-mda refused a message for {name}: {result.describe()}")
        msgid = _header_msgid(raw)
        if msgid:
            self._last_msgid[name] = msgid
        if refresh:
            self.refresh()

    def deliver_many(self, raws: Iterable[bytes], list_name: str | None = None) -> int:
        count = 0
        for raw in raws:
            self.deliver(raw, list_name, refresh=False)
            count += 1
        self.refresh()
        return count

    def deliver_mbox(self, mbox: Path | bytes, list_name: str | None = None) -> int:
        """Deliver every message of an mbox file (or its bytes) in order; returns the count."""
        if isinstance(mbox, Path):
            if mbox.stat().st_size > MAX_MBOX_BYTES:
                raise InputError(f"{mbox}: over {MAX_MBOX_BYTES} bytes, not delivering it")
            data = mbox.read_bytes()
        else:
            data = mbox
        return self.deliver_many(_split_mbox(data), list_name)

    # -- server ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise InfraError("LocalInbox is not serving: call start() first")
        return f"http://127.0.0.1:{self.port}"

    def list_url(self, list_name: str | None = None) -> str:
        return f"{self.base_url}/{list_name or self.lists[0]}/"

    def _answers(self) -> bool:
        # Any HTTP answer will do: an empty inbox answers new.atom with 404.
        try:
            resp = requests.get(self.list_url() + "new.atom", timeout=2.0,
                                headers={"User-Agent": USER_AGENT})
        except requests.RequestException:
            return False
        return resp.status_code < 500

    def start(self, *, port: int | None = None) -> str:
        """Start public-inbox-httpd on loopback; returns the base URL once it answers."""
        if self._server is not None and self._server.alive():
            return self.base_url
        self.create()
        last: InfraError | None = None
        # A free port can be taken between probing and binding: try a few.
        for _ in range(3):
            self.port = port or free_port()
            try:
                self._server = proc.start_background(
                    ["public-inbox-httpd", "-W0", "-l", f"http://127.0.0.1:{self.port}"],
                    ready=self._answers, ready_timeout=READY_TIMEOUT_S,
                    max_lifetime_s=MAX_LIFETIME_S, cwd=self.root, env=self._env(),
                    log_path=self.root / "httpd.log",
                )
                return self.base_url
            except InfraError as exc:
                last = exc
                if port is not None:
                    break
        self.port = None
        raise InfraError(f"public-inbox-httpd did not start: {last}")

    def refresh(self, timeout: float = 10.0) -> None:
        """Make the running server's search see everything delivered so far (see module doc)."""
        if self._server is None or not self._server.alive():
            return
        self._server.signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        pending = dict(self._last_msgid)
        while pending:
            for name, msgid in list(pending.items()):
                if self._search_finds(name, msgid):
                    del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise InfraError(
                    f"public-inbox-httpd search does not show {sorted(pending.values())} "
                    f"{timeout:.0f}s after SIGHUP"
                )
            time.sleep(0.05)

    def _search_finds(self, list_name: str, msgid: str) -> bool:
        try:
            resp = requests.get(  # timeout=5.0 below
                self.list_url(list_name),
                params={"q": f'm:"{msgid}"', "x": "A"},
                timeout=5.0, headers={"User-Agent": USER_AGENT},
            )
        except requests.RequestException:
            return False
        return resp.status_code == 200 and quote_msgid(msgid) in resp.text

    def stop(self) -> None:
        """Stop the server (its whole process group). The inbox files stay under root."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.port = None

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.alive()

    @property
    def server_pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def __enter__(self) -> LocalInbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _header_msgid(raw: bytes) -> str | None:
    """The Message-ID of a raw message, good enough to wait for it (not a parser)."""
    head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\n")
    for i, line in enumerate(lines):
        if line.lower().startswith(b"message-id:"):
            value = line.split(b":", 1)[1]
            j = i + 1
            while not value.strip() and j < len(lines) and lines[j][:1] in (b" ", b"\t"):
                value += lines[j]
                j += 1
            text = value.decode("ascii", "replace").strip()
            if text.startswith("<") and ">" in text:
                text = text[1 : text.index(">")]
            return text or None
    return None


def serve_mbox(
    root: Path, mboxes: Sequence[Path], list_name: str = "kvm"
) -> LocalInbox:
    """For `kbot demo`: a LocalInbox under root with the mboxes delivered, already serving.

    Use `.base_url` for [archive] base_url and `.stop()` (or `with`) to shut it down.
    """
    inbox = LocalInbox(root, (list_name,))
    try:
        inbox.create()
        inbox.start()
        for mbox in mboxes:
            inbox.deliver_mbox(mbox, list_name)
    except BaseException:
        inbox.stop()
        raise
    return inbox
