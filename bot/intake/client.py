"""HTTP client for a public-inbox archive (lore.kernel.org, or a local public-inbox-httpd).

Everything that crosses the network is bounded: each request has a timeout, connection errors,
5xx and 429 are retried with exponential backoff, response bodies are read in chunks up to
`max_download_bytes`, and gzip bodies are inflated incrementally up to `max_inflated_bytes`
(a small t.mbox.gz must not be able to expand into gigabytes), and a thread or search mbox
holds at most `max_thread_messages` messages (millions of tiny mails inflate to little but
cost gigabytes once parsed). A server that is down or answers with an error is an InfraError
(kbot could not look); an oversize answer is an InputError (the archive holds something kbot
refuses to take in).

Time, too: requests' timeout bounds each wait for a byte, so a server that trickles a byte
every few seconds would hold a request for ever. Each request also has an overall deadline of
`timeout_s` from its start to its last byte, headers included: a watchdog timer shuts the
request's socket down when it passes, and the request fails with an InfraError that says so
(not retried: a server that slow is not going to answer the retry sooner).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from bot import USER_AGENT
from bot.config import ArchiveSection
from bot.errors import InfraError, InputError

log = logging.getLogger(__name__)

ATOM = "{http://www.w3.org/2005/Atom}"
THR = "{http://purl.org/syndication/thread/1.0}"
CHUNK = 64 * 1024
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# public-inbox's MID_ESC: characters it leaves unescaped in a Message-ID path segment.
MSGID_SAFE = "-._~!$&'()*+,;=:@"
# The most entries public-inbox returns per Atom search page (SearchQuery's $LIM).
SEARCH_PAGE_MAX = 200


@dataclass(frozen=True)
class FeedEntry:
    """One Atom entry: a message as the archive lists it."""

    msgid: str
    title: str
    updated: datetime | None  # public-inbox: the received time (first Received:, else Date:)
    in_reply_to: str | None = None


class ArchiveHTTPError(InfraError):
    """The archive answered with an HTTP error status."""

    def __init__(self, method: str, url: str, status: int, reason: str) -> None:
        self.url = url
        self.status = status
        super().__init__(f"{method} {url}: HTTP {status} {reason}".rstrip())


class ArchiveBusy(InfraError):
    """The archive answered, but not in time or only with 5xx/429 until the retries ran out:
    it is up, so the watcher may go on with other threads (a connection error is not this)."""


class ThreadOverLimit(InputError):
    """A thread (or search mbox) over a limit; `read` holds the messages before it."""

    def __init__(self, message: str, read: tuple[bytes, ...]) -> None:
        super().__init__(message)
        self.read = read


# -- the overall deadline ----------------------------------------------------------------------


class _Deadline:
    """Shuts a request's socket down once `seconds` have passed, whatever phase it is in
    (connecting, reading headers, reading the body): the blocked read then ends at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def start(self) -> _Deadline:
        self._timer.start()
        return self

    def attach(self, conn: HTTPConnection | None) -> None:
        """Watch this connection's socket (kept: http.client lets go of it once the answer
        says the connection will close, while the body is still being read from it)."""
        sock = getattr(conn, "sock", None)
        with self._lock:
            if isinstance(sock, socket.socket):
                self._sock = sock
            if self.expired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is None:
            return
        try:
            # The plain socket's shutdown, also under TLS: SSLSocket.shutdown would drop its
            # SSL object under the reading thread's feet.
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._sock = None  # back in the pool, the socket may serve another request


_WATCH = threading.local()  # .deadline: the _Deadline of this thread's request in progress


def _attach_current(conn: HTTPConnection) -> None:
    deadline: _Deadline | None = getattr(_WATCH, "deadline", None)
    if deadline is not None:
        deadline.attach(conn)


class _WatchedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self)
        super().request(*args, **kwargs)

    def getresponse(self) -> Any:
        _attach_current(self)  # connected by now: the socket exists
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self)
        super().request(*args, **kwargs)

    def getresponse(self) -> Any:
        _attach_current(self)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter with connections a _Deadline can find (see _Deadline)."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def _dns_failure(exc: BaseException) -> bool:
    """Did name resolution fail (somewhere in the exception's causes)?"""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, socket.gaierror | urllib3.exceptions.NameResolutionError):
            return True
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = getattr(seen, "reason", None) or nested or seen.__cause__ or seen.__context__
    return False


def _short_reason(exc: requests.RequestException) -> str:
    """One short phrase for a failed request (requests' own text runs to several lines)."""
    text = str(exc)
    if isinstance(exc, requests.ConnectTimeout | requests.ReadTimeout):
        why = "timed out"
    elif "Connection refused" in text:
        why = "connection refused"
    elif "reset" in text.lower() or "aborted" in text.lower():
        why = "connection reset"
    else:
        why = text.splitlines()[0][:120] if text else "failed"
    return f"{type(exc).__name__}: {why}"


def quote_msgid(msgid: str) -> str:
    return urllib.parse.quote(msgid.strip().strip("<>"), safe=MSGID_SAFE)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _msgid_from_href(href: str, list_url: str) -> str | None:
    """`<base>/<list>/<escaped msgid>/` -> msgid; None for a link elsewhere."""
    if not href.startswith(list_url):
        return None
    rest = href[len(list_url):].strip("/")
    if not rest or "/" in rest:
        return None
    return urllib.parse.unquote(rest)


def parse_atom(body: bytes, list_url: str) -> list[FeedEntry]:
    """Entries of a public-inbox Atom document (new.atom or an x=A search page)."""
    try:
        # Bounded by max_download_bytes; expat >= 2.4 refuses entity-expansion bombs.
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise InputError(f"{list_url}: Atom feed does not parse: {exc}") from exc
    entries: list[FeedEntry] = []
    for entry in root.iter(f"{ATOM}entry"):
        msgid = None
        for link in entry.findall(f"{ATOM}link"):
            if link.get("rel", "alternate") == "alternate":
                msgid = _msgid_from_href(link.get("href", ""), list_url)
                if msgid:
                    break
        if not msgid:
            continue  # not a message of this list (public-inbox always links one; be lenient)
        reply = entry.find(f"{THR}in-reply-to")
        parent = _msgid_from_href(reply.get("href", ""), list_url) if reply is not None else None
        entries.append(
            FeedEntry(
                msgid=msgid,
                title=(entry.findtext(f"{ATOM}title") or "").strip(),
                updated=_parse_time(entry.findtext(f"{ATOM}updated")),
                in_reply_to=parent,
            )
        )
    return entries


def split_mboxrd(chunks: Iterator[bytes]) -> Generator[bytes, None, None]:
    """Raw messages of an mboxrd stream, one at a time, with the `>From ` quoting undone.

    Streaming on purpose: the watcher reads a delivery-ordered search result only until it
    reaches mail it already has, and must not download the rest of the archive.
    """
    buf = b""
    current: list[bytes] = []
    started = False

    def lines() -> Iterator[bytes]:
        nonlocal buf
        for chunk in chunks:
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if buf:
            yield buf

    for line in lines():
        if line.startswith(b"From "):
            if started and current:
                yield _strip_trailing_blank(current)
            current = []
            started = True
            continue
        if not started:
            continue  # junk before the first From_ line
        if line.startswith(b">") and line.lstrip(b">").startswith(b"From "):
            line = line[1:]
        current.append(line)
    if started and current:
        yield _strip_trailing_blank(current)


def _strip_trailing_blank(lines: list[bytes]) -> bytes:
    data = b"".join(lines)
    # mboxrd separates messages with one blank line that is not part of the message.
    return data[:-1] if data.endswith(b"\n\n") else data


class ArchiveClient:
    """One public-inbox archive (base URL from [archive] in the config)."""

    def __init__(self, cfg: ArchiveSection, *, session: requests.Session | None = None) -> None:
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        adapter = _WatchedAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._deadlines: dict[int, _Deadline] = {}  # id(response) -> its running deadline

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ArchiveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- URLs ------------------------------------------------------------------------------

    def list_url(self, list_name: str) -> str:
        return f"{self.base_url}/{urllib.parse.quote(list_name, safe='')}/"

    def message_url(self, msgid: str, list_name: str | None = None) -> str:
        # lore's /all/ finds a Message-ID in any list; a plain public-inbox needs the list.
        return f"{self.list_url(list_name or 'all')}{quote_msgid(msgid)}/"

    # -- requests --------------------------------------------------------------------------

    def _request(
        self, method: str, url: str, params: dict[str, str] | None = None
    ) -> requests.Response:
        """A streamed response with a 2xx status, after retries; the caller reads the body."""
        attempts = max(1, self.cfg.retries + 1)
        last = ""
        answered = False  # did the last try get an HTTP answer (5xx / 429)?
        for attempt in range(attempts):
            if attempt:
                delay = self.cfg.backoff_s * (2 ** (attempt - 1))
                log.debug("retrying %s %s in %.1fs (%s)", method, url, delay, last)
                time.sleep(delay)
            deadline = _Deadline(self.cfg.timeout_s).start()
            _WATCH.deadline = deadline
            try:
                resp = self.session.request(
                    method, url, params=params, stream=True, timeout=self.cfg.timeout_s,
                    headers={"Accept-Encoding": "identity"},
                )
            except requests.RequestException as exc:
                deadline.cancel()
                if deadline.expired:
                    raise self._overdue(method, url) from exc
                if _dns_failure(exc):
                    # A name that does not resolve will not resolve a second later: no retry.
                    raise InfraError(f"the archive {self.base_url} is unreachable: cannot "
                                     f"resolve {urllib.parse.urlsplit(url).hostname} "
                                     "(archive.base_url)") from exc
                last = _short_reason(exc)
                answered = False
                continue
            except BaseException:
                deadline.cancel()
                raise
            finally:
                _WATCH.deadline = None
            if resp.status_code in RETRY_STATUS:
                deadline.cancel()
                last = f"HTTP {resp.status_code}"
                answered = True
                resp.close()
                continue
            if resp.status_code >= 400:
                deadline.cancel()
                resp.close()
                raise ArchiveHTTPError(method, resp.url, resp.status_code, resp.reason or "")
            # The body is read later (_chunks): the deadline runs on until its last byte.
            conn = getattr(resp.raw, "connection", None)
            deadline.attach(conn if isinstance(conn, HTTPConnection) else None)
            self._deadlines[id(resp)] = deadline
            return resp
        raise (ArchiveBusy if answered else InfraError)(
            f"the archive {self.base_url} (archive.base_url) is unreachable "
            f"after {attempts} tries: {last} ({method} {url})")

    def _overdue(self, method: str, url: str) -> InfraError:
        return ArchiveBusy(
            f"{method} {url}: no complete answer within the {self.cfg.timeout_s:g}s deadline "
            "(archive.timeout_s): the archive is too slow or stalled"
        )

    def _chunks(self, resp: requests.Response, url: str) -> Iterator[bytes]:
        """The body in chunks, refusing more than max_download_bytes or past the deadline."""
        deadline = self._deadlines.pop(id(resp), None)
        limit = self.cfg.max_download_bytes
        declared = resp.headers.get("Content-Length", "")
        try:
            if declared.isdigit() and int(declared) > limit:
                raise InputError(
                    f"{url}: response of {declared} bytes is over the {limit}-byte limit")
            got = 0
            for chunk in resp.iter_content(CHUNK):
                got += len(chunk)
                if got > limit:
                    raise InputError(f"{url}: response is over the {limit}-byte download limit")
                yield chunk
            if deadline is not None and deadline.expired:
                # The socket was shut: what came may be cut short without an error.
                raise self._overdue(resp.request.method or "GET", url)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            if deadline is not None and deadline.expired:
                raise self._overdue(resp.request.method or "GET", url) from exc
            raise InfraError(f"{url}: connection lost while reading: {exc}") from exc
        finally:
            if deadline is not None:
                deadline.cancel()
            resp.close()

    def _inflate(self, chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
        """Gunzip a stream incrementally, refusing more than max_inflated_bytes."""
        limit = self.cfg.max_inflated_bytes
        dec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        fed = False  # has the current decompressor had input (so it must reach its end)?
        total = 0
        try:
            for chunk in chunks:
                data = chunk
                while data:
                    if dec.eof:  # concatenated gzip members: a new one starts here
                        dec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    fed = True
                    # max_length bounds each step, so a bomb never expands in memory at once.
                    out = dec.decompress(data, CHUNK)
                    total += len(out)
                    if total > limit:
                        raise InputError(
                            f"{url}: gzip body inflates past the {limit}-byte limit"
                        )
                    if out:
                        yield out
                    data = dec.unused_data if dec.eof else dec.unconsumed_tail
            while fed and not dec.eof:
                # Output zlib held back when a step hit max_length with all input consumed.
                out = dec.decompress(b"", CHUNK)
                if not out:
                    raise InputError(f"{url}: gzip body is truncated")
                total += len(out)
                if total > limit:
                    raise InputError(f"{url}: gzip body inflates past the {limit}-byte limit")
                yield out
        except zlib.error as exc:
            raise InputError(f"{url}: corrupt gzip body: {exc}") from exc
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _count_capped(self, chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
        """An mboxrd stream passed through, refusing more than max_thread_messages messages
        (counted by their `From ` lines: mboxrd quotes any such line inside a message)."""
        limit = self.cfg.max_thread_messages
        count = 0
        tail = b"\n"  # a separator split across two chunks is counted once
        try:
            for chunk in chunks:
                count += (tail + chunk).count(b"\nFrom ")
                if count > limit:
                    raise InputError(
                        f"{url}: more than {limit} messages (archive.max_thread_messages)")
                tail = (tail + chunk)[-5:]
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _get_bytes(self, url: str, params: dict[str, str] | None = None) -> bytes:
        resp = self._request("GET", url, params)
        return b"".join(self._chunks(resp, url))

    def _mbox_bytes(self, method: str, url: str, params: dict[str, str] | None = None) -> bytes:
        resp = self._request(method, url, params)
        return b"".join(self._count_capped(self._inflate(self._chunks(resp, url), url), url))

    # -- endpoints -------------------------------------------------------------------------

    def new_atom(self, list_name: str) -> list[FeedEntry]:
        """`/<list>/new.atom`: the newest entries (public-inbox keeps 25), newest first."""
        url = self.list_url(list_name) + "new.atom"
        try:
            body = self._get_bytes(url)
        except ArchiveHTTPError as exc:
            # public-inbox answers 404 both for an empty inbox and for no inbox at all.
            if exc.status == 404 and self._list_exists(list_name):
                return []
            if exc.status == 404:
                raise ArchiveHTTPError(
                    "GET", url, 404, f"(no list {list_name!r} at {self.base_url})"
                ) from exc
            raise
        return parse_atom(body, self.list_url(list_name))

    def _list_exists(self, list_name: str) -> bool:
        try:
            self._get_bytes(self.list_url(list_name) + "_/text/help/")
        except ArchiveHTTPError:
            return False
        return True

    def search_atom(
        self, list_name: str, query: str, *, offset: int = 0, limit: int = SEARCH_PAGE_MAX
    ) -> list[FeedEntry]:
        """`/<list>/?q=QUERY&x=A`: one page of search results, newest received first.

        public-inbox answers a query with no match with 404: that is an empty page here.
        """
        url = self.list_url(list_name)
        params = {"q": query, "x": "A", "o": str(offset), "l": str(min(limit, SEARCH_PAGE_MAX))}
        try:
            body = self._get_bytes(url, params)
        except ArchiveHTTPError as exc:
            if exc.status == 404:
                return []
            raise
        if body.strip() == b"</feed>":
            # public-inbox 1.9 answers a page past the last result with just this.
            return []
        return parse_atom(body, url)

    def iter_search_mbox(self, list_name: str, query: str) -> Generator[bytes, None, None]:
        """`POST /<list>/?q=QUERY&x=m`: matching raw messages, most recently *delivered* first.

        public-inbox orders this mbox by article number (delivery order), not by any date
        header, so it finds mail whose Date: and Received: are both old. Streamed: stop
        iterating and the download stops too. No match is an empty iterator.
        """
        url = self.list_url(list_name)
        try:
            resp = self._request("POST", url, {"q": query, "x": "m"})
        except ArchiveHTTPError as exc:
            if exc.status == 404:
                return
            raise
        yield from split_mboxrd(self._inflate(self._chunks(resp, url), url))

    def search_mbox(self, list_name: str, query: str) -> bytes:
        """The whole x=m result as one (inflated, bounded) mboxrd blob."""
        url = self.list_url(list_name)
        try:
            return self._mbox_bytes("POST", url, {"q": query, "x": "m"})
        except ArchiveHTTPError as exc:
            if exc.status == 404:
                return b""
            raise

    def thread_mbox(self, msgid: str, list_name: str | None = None) -> bytes:
        """`/<list>/<msgid>/t.mbox.gz`: the whole thread around msgid, inflated (mboxrd)."""
        url = self.message_url(msgid, list_name) + "t.mbox.gz"
        return self._mbox_bytes("GET", url)

    def thread_messages(self, msgid: str, list_name: str | None = None) -> tuple[bytes, ...]:
        """The raw messages of msgid's thread (t.mbox.gz), read in full before they are
        returned (so a slow consumer never holds the download open past its deadline).

        Over max_thread_messages, or a body over a byte limit or cut short: ThreadOverLimit,
        an InputError whose `read` holds the messages that came before it.
        """
        url = self.message_url(msgid, list_name) + "t.mbox.gz"
        resp = self._request("GET", url)
        limit = self.cfg.max_thread_messages
        read: list[bytes] = []
        stream = split_mboxrd(self._inflate(self._chunks(resp, url), url))
        try:
            for raw in stream:
                if len(read) >= limit:
                    raise InputError(
                        f"{url}: more than {limit} messages (archive.max_thread_messages); "
                        f"kept the first {limit}")
                read.append(raw)
        except InputError as exc:
            raise ThreadOverLimit(str(exc), tuple(read)) from exc
        finally:
            stream.close()
        return tuple(read)

    def raw(self, msgid: str, list_name: str | None = None) -> bytes:
        """`/<list>/<msgid>/raw`: one message as the archive stored it."""
        url = self.message_url(msgid, list_name) + "raw"
        resp = self._request("GET", url)
        limit = self.cfg.max_message_bytes
        chunks: list[bytes] = []
        got = 0
        for chunk in self._chunks(resp, url):
            got += len(chunk)
            if got > limit:
                raise InputError(f"{url}: message is over the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)
