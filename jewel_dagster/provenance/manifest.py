"""What a generated image's C2PA manifest claims: created by a trained model (IPTC digital source
type `trainedAlgorithmicMedia`), which generator, the workflow, when, and the input photo as an
ingredient named by its SHA-256 only (the shopper's pixels never travel in the manifest).

No thumbnail is asked for: the C2PA library would decode and re-encode the 2000x2667 canvas to
make one (~0.7 s a JPEG here against ~15 ms without), and the image itself is at hand anyway.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# IPTC NewsCodes: "created by a model trained on sampled content", the term the EU AI Act's
# marking guidance and C2PA's `c2pa.created` action use for generative AI.
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CLAIM_GENERATOR = "jewel-dagster"
# Our own assertion: the workflow and the generator, for the shop's records and the web page.
GENERATION_ASSERTION = "com.jewel-dagster.generation"
INGREDIENT_HASH_PREFIX = "sha256:"
MADE_WITH_AI = "Made with AI"

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"WEBP", 8, "image/webp"),
    (b"GIF8", 0, "image/gif"),
)


def sniff_mime(data: bytes) -> str:
    """The MIME type by the file's first bytes (the ingredient's `format`): the uploaded photo's
    name is not kept, and its bytes say what it is."""
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    return "application/octet-stream"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class GenerationFacts:
    """What is known of one generated image when it is made.

    generator: the result's key ("flux", "gemini"); backend: the `backends` value the API
    answers for it (no internal address in it: the manifest is public).
    """

    generator: str
    backend: str
    workflow_id: str
    created_at: datetime
    input_sha256: str | None = None
    input_format: str = "application/octet-stream"

    def to_dict(self) -> dict[str, str | None]:
        return {
            "generator": self.generator,
            "backend": self.backend,
            "workflowId": self.workflow_id,
            "createdAt": self.created_at.isoformat(),
            "inputSha256": self.input_sha256,
        }


def manifest_definition(facts: GenerationFacts, mime: str, version: str = "0.1.0") -> dict[str, Any]:
    """The manifest definition the C2PA `Builder` signs (its JSON schema: `ManifestDefinition`)."""
    when = facts.created_at.isoformat()
    action: dict[str, Any] = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": f"{facts.generator} ({facts.backend})"},
        "when": when,
        "parameters": {"description": f"jewelry try-on image made by {facts.generator}"},
    }
    definition: dict[str, Any] = {
        "claim_generator_info": [{"name": CLAIM_GENERATOR, "version": version}],
        "title": f"{facts.generator}_result{_EXTENSIONS.get(mime, '')}",
        "format": mime,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [action]}},
            {"label": GENERATION_ASSERTION, "data": facts.to_dict()},
        ],
    }
    if facts.input_sha256:
        # By hash only: no stream is given to the builder, so no pixels nor thumbnail of the photo.
        definition["ingredients"] = [
            {
                "title": "the shopper's photo",
                "format": facts.input_format,
                "relationship": "inputTo",
                "instance_id": f"{INGREDIENT_HASH_PREFIX}{facts.input_sha256}",
                "description": "the uploaded photo the image was made from, named by its SHA-256",
            }
        ]
    return definition


_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}
