"""The signing identity (a private key and its certificate chain) and the C2PA signing itself.

A deployment names its key and chain (`C2PA_SIGNING_KEY`, `C2PA_SIGNING_CERT`: a file path or the
PEM text). Without them the embedded default makes a test identity at first start, once, in the
data folder (a local CA and an ES256 signing certificate, as C2PA's profile asks: digitalSignature,
emailProtection; never committed): images are then signed and verifiable, but by no one a
validator trusts, and `/health` says `provenance: "test certificate"`.

Several processes start at once (the gateway, the run workers): the identity is written to a
temporary file and linked into place, so the first one wins and the others read it.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jewel_dagster.provenance.manifest import GenerationFacts, manifest_definition
from jewel_dagster.provenance.xmp import jpeg_with_xmp, png_with_xmp, xmp_packet

ProvenanceMode = Literal["configured certificate", "test certificate", "off"]
TEST_IDENTITY_FILE = "c2pa-test-identity.pem"  # the key and the chain in one file: one atomic link
TEST_ORGANIZATION = "jewel-dagster test certificate (not trusted)"
_ALGORITHMS = {"EC": c2pa.C2paSigningAlg.ES256}


class ProvenanceConfigError(ValueError):
    """The configured key or certificate cannot be used: the message says which and why."""


@dataclass(frozen=True)
class SigningIdentity:
    """A PEM private key and the PEM chain of its certificate (signing certificate first)."""

    key_pem: bytes
    chain_pem: bytes
    mode: ProvenanceMode


def _pem(value: str, what: str) -> bytes:
    """PEM text as given, or the file it names."""
    if "-----BEGIN" in value:
        return value.encode("ascii")
    path = Path(value)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ProvenanceConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


def configured_identity(cert: str, key: str) -> SigningIdentity:
    """The deployment's identity, checked now (a wrong key fails at start, not at the first image)."""
    chain, private = _pem(cert, "C2PA_SIGNING_CERT"), _pem(key, "C2PA_SIGNING_KEY")
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
        loaded = serialization.load_pem_private_key(private, password=None)
    except ValueError as exc:
        raise ProvenanceConfigError(f"C2PA signing key or certificate is not PEM: {exc}") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise ProvenanceConfigError("C2PA_SIGNING_KEY must be an EC P-256 key (ES256)")
    if leaf.public_key() != loaded.public_key():
        raise ProvenanceConfigError("C2PA_SIGNING_CERT's first certificate is not the certificate of C2PA_SIGNING_KEY")
    return SigningIdentity(private, chain, "configured certificate")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TEST_ORGANIZATION),
        ]
    )


def _key_usage(sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not sign,
        crl_sign=not sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_test_identity(days: int = 3650) -> SigningIdentity:
    """A local CA and an ES256 signing certificate it issued: C2PA refuses a self-signed signer."""
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    valid = {"not_valid_before": now - timedelta(days=1), "not_valid_after": now + timedelta(days=days)}
    ca = (
        x509.CertificateBuilder(subject_name=_name("jewel-dagster test CA"), issuer_name=_name("jewel-dagster test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder(subject_name=_name("jewel-dagster test signer"), issuer_name=ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    key_pem = key.private_bytes(pem, pkcs8, serialization.NoEncryption())
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    return SigningIdentity(key_pem, chain, "test certificate")


def test_identity(folder: Path) -> SigningIdentity:
    """The data folder's test identity, made by the first process that asks (0600: it holds a key)."""
    path = folder / TEST_IDENTITY_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        made = make_test_identity()
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".c2pa-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(made.key_pem + made.chain_pem)
            try:
                os.link(temporary, path)  # fails if another process linked its identity first
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary)
    text = path.read_bytes()
    start = text.index(b"-----BEGIN CERTIFICATE-----")
    return SigningIdentity(text[:start], text[start:], "test certificate")


def resolve_identity(enabled: bool, cert: str | None, key: str | None, test_folder: Path) -> SigningIdentity | None:
    """The identity the settings select: none when off, the configured one, else the test one."""
    if not enabled:
        return None
    if bool(cert) != bool(key):
        raise ProvenanceConfigError("set both C2PA_SIGNING_CERT and C2PA_SIGNING_KEY, or neither")
    if cert and key:
        return configured_identity(cert, key)
    return test_identity(test_folder)


class ImageSigner:
    """Signs generated images: the XMP field spliced in, then the C2PA manifest embedded.

    One native signer and context, built once and shared by threads (a `Builder` is made per
    image: a builder signs once). The lock is there because the bindings' objects are not
    documented as thread-safe; signing takes ~15 ms a JPEG, so it costs nothing measurable.
    """

    def __init__(self, identity: SigningIdentity) -> None:
        self.identity = identity
        info = c2pa.C2paSignerInfo(_ALGORITHMS["EC"], identity.chain_pem, identity.key_pem, None)
        self._signer = c2pa.Signer.from_info(info)
        # No thumbnail (manifest.py says why); no trust lists: nothing is verified when signing.
        self._context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        self._xmp = xmp_packet()
        self._lock = threading.Lock()

    def sign(self, data: bytes, mime: Literal["image/jpeg", "image/png"], facts: GenerationFacts) -> bytes:
        """The encoded image with its XMP field and its signed C2PA manifest embedded."""
        marked = jpeg_with_xmp(data, self._xmp) if mime == "image/jpeg" else png_with_xmp(data, self._xmp)
        out = io.BytesIO()
        with self._lock:
            builder = c2pa.Builder(manifest_definition(facts, mime), self._context)
            try:
                builder.sign(self._signer, mime, io.BytesIO(marked), out)
            finally:
                builder.close()
        return out.getvalue()
