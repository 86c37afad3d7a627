"""Provenance of generated images (EU AI Act, Article 50: AI-generated images marked in a
machine-readable way): a C2PA manifest signed into each generated JPEG and PNG, and the
IPTC/XMP `DigitalSourceType` field for readers without C2PA.

Pure code, free of Dagster and HTTP: `manifest` says what is claimed, `xmp` writes the XMP
packet into the encoded bytes, `signer` holds the signing identity and signs, `reader` reads a
manifest back (the CLI's `jewel verify`, the gateway's result, the tests).
"""
