"""Checks shared by the provenance tests (unit and end to end)."""

from __future__ import annotations

import zlib


def _start_of_scan(data: bytes) -> int:
    """Where a JPEG's start-of-scan marker is, found by walking its segments from the start: the
    first FFDA bytes of the file may lie inside a segment before it (the C2PA manifest's signature
    and timestamps change at each signing, so now and then they held FFDA: CI failed on it)."""
    at = 2  # after SOI
    while data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xDA:
            return at
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    raise ValueError(f"no start of scan: byte {at} is not a marker")


def edit_a_pixel(data: bytes, mime: str) -> bytes:
    """One pixel's value changed in the file as it is: every other byte (the manifest among them)
    kept. A JPEG: one bit of its entropy-coded scan; a PNG: one byte of a row, recompressed."""
    if mime == "image/jpeg":
        edited = bytearray(data)
        start = _start_of_scan(data)  # the entropy-coded pixels follow its header
        edited[start + 2 + int.from_bytes(data[start + 2 : start + 4], "big") + 40] ^= 0x10
        return bytes(edited)
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    rows = bytearray(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
    rows[1 + 5 * 3] ^= 0x10  # row 0 (after its filter byte), pixel 5, red
    idat = zlib.compress(bytes(rows))
    out, written = bytearray(data[:8]), False
    for kind, body in chunks:
        if kind == b"IDAT":
            if written:
                continue
            kind, body, written = b"IDAT", idat, True
        out += len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    return bytes(out)
