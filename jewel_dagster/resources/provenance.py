"""The signer of generated images as a Dagster resource: the settings' identity, built once per
step process (`setup_for_execution`), handed to the step that has the generation's bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from jewel_dagster.provenance.manifest import GenerationFacts
from jewel_dagster.provenance.signer import ImageSigner, ProvenanceMode, resolve_identity


class ImageProvenance(dg.ConfigurableResource):
    enabled: bool = Field(default=True, description="False (C2PA=off): images are stored as encoded, unsigned.")
    signing_cert: str | None = Field(default=None, description="PEM chain or its path; unset: the test identity.")
    signing_key: str | None = Field(default=None, description="PEM EC P-256 key or its path (an EnvVar).")
    test_folder: str = Field(default=".data/c2pa", description="Where the test identity is made and kept.")
    _signer: ImageSigner | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        identity = resolve_identity(self.enabled, self.signing_cert, self.signing_key, Path(self.test_folder))
        self._signer = ImageSigner(identity) if identity else None

    @property
    def mode(self) -> ProvenanceMode:
        return self._signer.identity.mode if self._signer else "off"

    def sign(self, data: bytes, mime: Literal["image/jpeg", "image/png"], facts: GenerationFacts) -> bytes:
        """The image signed (XMP field and C2PA manifest), or as it is when provenance is off."""
        return self._signer.sign(data, mime, facts) if self._signer else data
