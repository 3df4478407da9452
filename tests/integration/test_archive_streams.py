"""The client's stream pieces on their own: mboxrd splitting and bounded gunzip (fast)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import pytest

from bot.config import ArchiveSection
from bot.errors import InputError
from bot.intake.client import ArchiveClient, split_mboxrd

MBOXRD = (
    b"From mboxrd@z Thu Jan  1 00:00:00 1970\n"
    b"Message-ID: <a@x>\n\nbody a\n>From the quoted line\n>>From twice\n\n"
    b"From mboxrd@z Thu Jan  1 00:00:00 1970\n"
    b"Message-ID: <b@x>\n\nbody b\n\n"
)


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_split_mboxrd_any_chunking(size: int) -> None:
    msgs = list(split_mboxrd(pieces(MBOXRD, size)))
    assert msgs == [
        b"Message-ID: <a@x>\n\nbody a\nFrom the quoted line\n>From twice\n",
        b"Message-ID: <b@x>\n\nbody b\n",
    ]


def test_inflate_handles_concatenated_members_and_stops_a_bomb() -> None:
    client = ArchiveClient(ArchiveSection(max_inflated_bytes=1_000_000))
    two = gzip.compress(b"first\n") + gzip.compress(b"second\n")
    assert b"".join(client._inflate(pieces(two, 5), "u")) == b"first\nsecond\n"
    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 kB on the wire
    assert len(bomb) < 100_000
    out = 0
    with pytest.raises(InputError, match="u: gzip body inflates past the 1000000-byte limit"):
        for chunk in client._inflate(pieces(bomb, 65536), "u"):
            out += len(chunk)
    assert out <= 1_000_000
    with pytest.raises(InputError, match="u: gzip body is truncated"):
        list(client._inflate(pieces(gzip.compress(b"y" * 100_000)[:-12], 4), "u"))
    with pytest.raises(InputError, match="u: corrupt gzip body"):
        list(client._inflate(pieces(b"<html>not gzip</html>", 4), "u"))
