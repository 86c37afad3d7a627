"""The IPTC `DigitalSourceType` as an XMP packet written into the encoded image, for readers that
know XMP but not C2PA (photo managers, IPTC-aware CMSs, `exiftool -XMP-iptcExt:DigitalSourceType`).

Spliced into the bytes the encoder made (a JPEG APP1 segment, a PNG iTXt chunk), not encoded
again: a few microseconds, and the pixels stay exactly what the encoder wrote. It goes in before
signing, so the C2PA hard binding covers it too.
"""

from __future__ import annotations

import struct
import zlib

from jewel_dagster.provenance.manifest import TRAINED_ALGORITHMIC_MEDIA

_JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class XmpError(ValueError):
    """The bytes are not the JPEG or PNG the encoder was expected to make."""


def xmp_packet(digital_source_type: str = TRAINED_ALGORITHMIC_MEDIA) -> bytes:
    """An XMP packet with IPTC Extension's DigitalSourceType (and nothing else)."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
        f"<Iptc4xmpExt:DigitalSourceType>{digital_source_type}</Iptc4xmpExt:DigitalSourceType>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="r"?>'
    ).encode()


def jpeg_with_xmp(jpeg: bytes, packet: bytes) -> bytes:
    """The JPEG with an XMP APP1 segment after SOI (and after a JFIF APP0, which must come first)."""
    if jpeg[:2] != b"\xff\xd8":
        raise XmpError("not a JPEG (no SOI marker)")
    body = _JPEG_XMP_HEADER + packet
    if len(body) + 2 > 0xFFFF:
        raise XmpError("XMP packet too large for one APP1 segment")
    at = 2
    if jpeg[2:4] == b"\xff\xe0":  # JFIF APP0: keep it first
        at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    segment = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return jpeg[:at] + segment + jpeg[at:]


def png_with_xmp(png: bytes, packet: bytes) -> bytes:
    """The PNG with an uncompressed iTXt chunk `XML:com.adobe.xmp` right after IHDR."""
    if png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise XmpError("not a PNG (no signature and IHDR)")
    at = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4  # signature, IHDR's length+type, data, CRC
    data = _PNG_XMP_KEYWORD + b"\x00\x00\x00" + b"\x00" + b"\x00" + packet  # keyword, flags, lang, key
    chunk = struct.pack(">I", len(data)) + b"iTXt" + data + struct.pack(">I", zlib.crc32(b"iTXt" + data))
    return png[:at] + chunk + png[at:]
