"""Generated images carry provenance (issue 33, EU AI Act Art. 50): the C2PA manifest's content
read back with the same library, the XMP field, the identity, and that an edited pixel shows."""

from __future__ import annotations

import base64
import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from gateway import cli
from gateway.provenance import provenance_mode
from gateway.results import ResultReader
from jewel_dagster.provenance.manifest import TRAINED_ALGORITHMIC_MEDIA, GenerationFacts, sha256_hex
from jewel_dagster.provenance.reader import read_manifest
from jewel_dagster.provenance.signer import (
    TEST_IDENTITY_FILE,
    ImageSigner,
    ProvenanceConfigError,
    make_test_identity,
    resolve_identity,
)
from jewel_dagster.public_names import public_backend
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.resources.io_manager import BlobIOManager, EncodedImage
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import artifact_path, jpeg_rendition_path
from jewel_dagster.vision import imaging
from tests.support.provenance import edit_a_pixel

PHOTO = b"\xff\xd8\xff\xe0 the shopper's photo"
RID = "jewelry-gen-00000000-0000-0000-0000-0000000000c2"
WHEN = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
BACKEND = public_backend("http:http://10.0.0.7:9000/flux")  # as result.backends names it
FACTS = GenerationFacts("flux", BACKEND, RID, WHEN, sha256_hex(PHOTO), "image/jpeg")


def _image() -> np.ndarray:
    """A smooth picture with a disc (a real JPEG's entropy data; noise would be atypically large)."""
    y, x = np.mgrid[0:120, 0:90]
    image = np.stack([x * 2, y * 2, (x + y) % 256], axis=2).astype(np.uint8)
    image[(y - 60) ** 2 + (x - 45) ** 2 < 400] = (250, 210, 20)
    return image


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> ImageSigner:
    identity = resolve_identity(True, None, None, tmp_path_factory.mktemp("c2pa"))
    assert identity is not None
    return ImageSigner(identity)


@pytest.mark.parametrize("mime", ["image/jpeg", "image/png"])
def test_the_manifest_says_made_by_a_trained_model_with_the_request_facts(signer: ImageSigner, mime: str) -> None:
    image = _image()
    encoded = imaging.encode_jpeg(image) if mime == "image/jpeg" else imaging.encode_png(image)
    signed = signer.sign(encoded, mime, FACTS)  # type: ignore[arg-type]
    report = read_manifest(signed)
    assert report is not None and report.valid, report and report.store["validation_status"]
    created = report.created_action()
    assert created is not None
    assert created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert created["softwareAgent"]["name"] == "flux (http)"  # the public backend: no internal address
    assert created["when"] == WHEN.isoformat()
    assert report.generation() == {
        "generator": "flux",
        "backend": "http",
        "workflowId": RID,
        "createdAt": WHEN.isoformat(),
        "inputSha256": sha256_hex(PHOTO),
    }
    (ingredient,) = report.manifest["ingredients"]
    assert ingredient["instance_id"] == f"sha256:{sha256_hex(PHOTO)}" and ingredient["relationship"] == "inputTo"
    # By hash only: no thumbnail, no data of the photo, none of the image either.
    assert "thumbnail" not in ingredient and "data" not in ingredient and "thumbnail" not in report.manifest
    assert "10.0.0.7" not in json.dumps(report.store)
    assert report.summary()["label"] == "Made with AI"
    # The pixels are the encoder's: signing adds metadata, it does not encode again.
    decoded = np.array(Image.open(io.BytesIO(signed)).convert("RGB"))
    assert np.array_equal(decoded, np.array(Image.open(io.BytesIO(encoded)).convert("RGB")))


def test_the_xmp_field_names_the_digital_source_type_for_readers_without_c2pa(signer: ImageSigner) -> None:
    image = _image()
    jpeg = Image.open(io.BytesIO(signer.sign(imaging.encode_jpeg(image), "image/jpeg", FACTS)))
    png = Image.open(io.BytesIO(signer.sign(imaging.encode_png(image), "image/png", FACTS)))
    field = f"<Iptc4xmpExt:DigitalSourceType>{TRAINED_ALGORITHMIC_MEDIA}</Iptc4xmpExt:DigitalSourceType>"
    assert field.encode() in jpeg.info["xmp"]
    assert field in png.info["XML:com.adobe.xmp"]


@pytest.mark.parametrize("mime", ["image/jpeg", "image/png"])
def test_an_edited_pixel_breaks_validation(signer: ImageSigner, mime: str) -> None:
    image = _image()
    encoded = imaging.encode_jpeg(image) if mime == "image/jpeg" else imaging.encode_png(image)
    signed = signer.sign(encoded, mime, FACTS)  # type: ignore[arg-type]
    edited = edit_a_pixel(signed, mime)
    before, after = (np.array(Image.open(io.BytesIO(d)).convert("RGB")) for d in (signed, edited))
    assert not np.array_equal(before, after)  # the edit did change pixels
    report = read_manifest(edited)
    assert report is not None and not report.valid
    assert "assertion.dataHash.mismatch" in report.failures
    assert report.summary()["label"] is None  # the page shows no label for a broken manifest


def test_the_pixel_edit_finds_the_scan_past_a_segment_holding_its_marker_bytes() -> None:
    """A signed JPEG's manifest changes at each signing and now and then holds the bytes FFDA
    (start of scan) before the real scan: the edit must land in the pixels all the same (CI once
    failed when it looked for the first FFDA of the file)."""
    plain = imaging.encode_jpeg(_image())
    payload = b"manifest-like \xff\xda\xff\xff bytes"
    segment = b"\xff\xeb" + (len(payload) + 2).to_bytes(2, "big") + payload  # APP11, as C2PA's JUMBF
    jpeg = plain[:2] + segment + plain[2:]
    edited = edit_a_pixel(jpeg, "image/jpeg")
    assert edited[: len(segment) + 2] == jpeg[: len(segment) + 2]  # the segment is left as it was
    before, after = (np.array(Image.open(io.BytesIO(d)).convert("RGB")) for d in (jpeg, edited))
    assert not np.array_equal(before, after)


def test_an_unsigned_image_has_no_manifest() -> None:
    assert read_manifest(imaging.encode_jpeg(_image())) is None


def test_the_test_identity_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = resolve_identity(True, None, None, tmp_path)
    again = resolve_identity(True, None, None, tmp_path)
    assert first is not None and first == again and first.mode == "test certificate"
    assert os.stat(tmp_path / TEST_IDENTITY_FILE).st_mode & 0o077 == 0  # it holds a private key
    assert resolve_identity(False, None, None, tmp_path / "off") is None
    assert not (tmp_path / "off").exists()


def test_a_configured_identity_is_checked_at_start(tmp_path: Path) -> None:
    mine, other = make_test_identity(), make_test_identity()
    (tmp_path / "chain.pem").write_bytes(mine.chain_pem)
    identity = resolve_identity(True, str(tmp_path / "chain.pem"), mine.key_pem.decode(), tmp_path)
    assert identity is not None and identity.mode == "configured certificate"
    assert not (tmp_path / TEST_IDENTITY_FILE).exists()
    with pytest.raises(ProvenanceConfigError, match="is not the certificate of C2PA_SIGNING_KEY"):
        resolve_identity(True, mine.chain_pem.decode(), other.key_pem.decode(), tmp_path)
    with pytest.raises(ProvenanceConfigError, match="set both"):
        resolve_identity(True, mine.chain_pem.decode(), None, tmp_path)
    with pytest.raises(ProvenanceConfigError, match="cannot read"):
        resolve_identity(True, str(tmp_path / "missing.pem"), mine.key_pem.decode(), tmp_path)


def test_health_mode_follows_the_settings(tmp_path: Path) -> None:
    blobs = str(tmp_path / "blobs")
    assert provenance_mode(PipelineSettings(local_blob_root=blobs, c2pa="off")) == "off"
    assert provenance_mode(PipelineSettings(local_blob_root=blobs)) == "test certificate"
    assert (tmp_path / "c2pa" / TEST_IDENTITY_FILE).is_file()  # made under the data folder, beside the blobs


def test_the_io_manager_stores_the_signed_bytes_and_the_result_reads_their_manifest(
    signer: ImageSigner, tmp_path: Path
) -> None:
    image = _image()
    png = signer.sign(imaging.encode_png(image), "image/png", FACTS)
    jpeg = signer.sign(imaging.encode_jpeg(image), "image/jpeg", FACTS)
    store = LocalBlobStore(root=str(tmp_path), container="jewelry-uploads")
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("requests", [RID])
        context = dg.build_output_context(
            asset_key=dg.AssetKey("flux_generation"),
            partition_key=RID,
            run_id="run-1",
            asset_partitions_def=dg.DynamicPartitionsDefinition(name="requests"),
            instance=instance,
        )
        BlobIOManager(blob_store=store).handle_output(context, EncodedImage(image, png, jpeg))
    path = artifact_path(RID, "flux_generation", "png", "run-1")
    assert store.get_path(path) == png and store.get_path(jpeg_rendition_path(path)) == jpeg
    result = ResultReader(store).result_of(RID, "run-1", "jewelry_generation", lambda _: None)
    assert base64.b64decode(result["flux_result_base64"]) == jpeg
    assert result["provenance"]["flux_result"]["label"] == "Made with AI"
    assert result["provenance"]["flux_result"]["workflowId"] == RID


def test_jewel_verify_prints_the_manifest_and_says_when_the_file_was_changed(
    signer: ImageSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = signer.sign(imaging.encode_png(_image()), "image/png", FACTS)
    (tmp_path / "flux.png").write_bytes(signed)
    assert cli.main(["verify", str(tmp_path / "flux.png")]) == cli.EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    assert printed["label"] == "Made with AI" and printed["workflowId"] == RID
    assert printed["manifest"]["assertions"][0]["data"]["actions"][0]["action"] == "c2pa.created"

    (tmp_path / "edited.png").write_bytes(edit_a_pixel(signed, "image/png"))
    assert cli.main(["verify", str(tmp_path / "edited.png")]) == cli.EXIT_FAILED
    assert "does not match its manifest: " in capsys.readouterr().err

    (tmp_path / "plain.jpg").write_bytes(imaging.encode_jpeg(_image()))
    assert cli.main(["verify", str(tmp_path / "plain.jpg")]) == cli.EXIT_REFUSED
    assert "carries no C2PA manifest" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not an image")
    assert cli.main(["verify", str(tmp_path / "notes.txt")]) == cli.EXIT_REFUSED
    assert cli.main(["verify", str(tmp_path / "missing.png")]) == cli.EXIT_REFUSED
