"""How fresh is a local public-inbox: delivery cost, and when search sees new mail.

Prints: seconds per public-inbox-mda delivery; seconds until `?q=` search (Xapian, behind
public-inbox-httpd) shows a new message without help; the same after SIGHUP
(LocalInbox.refresh); and the feed (new.atom, over.sqlite3), which is immediate.
Run: .venv/bin/python bench/public_inbox_lag.py. Takes about 40 s.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bot.config import ArchiveSection
from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox

MAIL = (
    "From: Bench <bench@example.org>\nTo: kvm@vger.kernel.org\nSubject: lag {n}\n"
    "Date: Thu, 1 Jan 2015 00:00:00 +0000\nMessage-ID: <lag-{n}@bench>\n\nbody\n"
)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kbot-pi-lag-") as tmp, LocalInbox(Path(tmp)) as ib:
        ib.start()
        client = ArchiveClient(ArchiveSection(base_url=ib.base_url))
        t = time.monotonic()
        for n in range(10):
            ib.deliver(MAIL.format(n=n).encode(), refresh=False)
        print(f"public-inbox-mda: {(time.monotonic() - t) / 10:.2f} s per message")
        ib.refresh()

        ib.deliver(MAIL.format(n="feed").encode(), refresh=False)
        t = time.monotonic()
        feed = {e.msgid for e in client.new_atom("kvm")}
        print(f"new.atom shows it: {'lag-feed@bench' in feed} after {time.monotonic() - t:.2f} s")

        t = time.monotonic()
        while not client.search_atom("kvm", 'm:"lag-feed@bench"'):
            time.sleep(0.2)
        print(f"search shows it without help after {time.monotonic() - t:.1f} s")

        t = time.monotonic()
        ib.deliver(MAIL.format(n="hup").encode())  # refresh: SIGHUP + wait for search
        print(f"deliver + SIGHUP until search shows it: {time.monotonic() - t:.2f} s")


if __name__ == "__main__":
    main()
