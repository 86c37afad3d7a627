"""The suite's HTTP clients read the trusted CAs lazily, from the system's hashed folder.

httpx builds a TLS context for every client, plain-http ones included, and by default fills it
with a whole CA bundle (`SSL_CERT_FILE`, or certifi's): 144 certificates parsed, 30-45 ms of CPU
each time on these machines. The tests create thousands of clients (`httpx.get` in a wait loop is
one each), and so do the stacks' processes they start: py-spy found ~95 CPU-s of a ~770 CPU-s
suite run in `load_verify_locations`. A context given a hashed folder (`SSL_CERT_DIR`, what
`c_rehash` makes, Debian's /etc/ssl/certs) loads nothing up front and looks a CA up when a TLS
handshake needs it: the same CAs are trusted, the context costs ~0.2 ms. httpx prefers
`SSL_CERT_FILE` to `SSL_CERT_DIR`, so the file is dropped from the environment the suite (and
every process it starts) runs in. Production processes keep their environment as deployed.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

SYSTEM_CA_FOLDER = Path("/etc/ssl/certs")


def read_cas_lazily(environ: MutableMapping[str, str], folder: Path = SYSTEM_CA_FOLDER) -> bool:
    """Point `environ` at the hashed CA folder, if there is one (`<hash>.0` links); False if not."""
    if not any(folder.glob("*.0")):
        return False
    environ.pop("SSL_CERT_FILE", None)
    environ["SSL_CERT_DIR"] = str(folder)
    return True

