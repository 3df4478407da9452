"""A DKIM signer for tests: an RSA key made with openssl, mail signed with dkimpy, and the
DNS TXT record a verifier would find, served by a stub lookup (there is no DNS here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dkim  # type: ignore[import-untyped]

from bot import proc


@dataclass(frozen=True)
class Key:
    private_pem: bytes
    public_b64: str  # the DER public key, base64 (the PEM body)

    @property
    def txt(self) -> bytes:
        """The DKIM TXT record of this key (selector._domainkey.domain)."""
        return b"v=DKIM1; k=rsa; p=" + self.public_b64.encode()


def make_key(tmp: Path, name: str = "key") -> Key:
    pem = tmp / f"{name}.pem"
    proc.run(["openssl", "genrsa", "-out", str(pem), "2048"], timeout=60, check=True)
    pub = proc.run(["openssl", "rsa", "-in", str(pem), "-pubout"], timeout=60, check=True)
    body = "".join(ln for ln in pub.stdout.splitlines() if ln and not ln.startswith("-----"))
    return Key(pem.read_bytes(), body)


def sign(raw: bytes, key: Key, domain: str, selector: str = "test") -> bytes:
    """`raw` with a DKIM-Signature of `domain` on top (relaxed/simple, as most MTAs sign)."""
    header = dkim.sign(raw, selector.encode(), domain.encode(), key.private_pem,
                       include_headers=[b"from", b"to", b"subject", b"date", b"message-id",
                                        b"in-reply-to", b"references"],
                       linesep=b"\n")
    return bytes(header) + raw


def stub_dns(records: Mapping[str, bytes]) -> object:
    """A dkimpy dnsfunc answering from `records` ("sel._domainkey.domain" -> TXT)."""

    def lookup(name: bytes, timeout: float = 5.0) -> bytes | None:
        return records.get(name.decode().rstrip("."))

    return lookup
