"""How generated images are signed, decided once at the gateway's start for `/health`.

Resolving the identity here also makes the test certificate at first start when none is
configured (the run workers then find it in the data folder), and a configured key that cannot
be used stops the gateway with the reason instead of failing each generation later.
"""

from __future__ import annotations

from jewel_dagster.provenance.signer import ProvenanceMode, resolve_identity
from jewel_dagster.settings import PipelineSettings


def provenance_mode(settings: PipelineSettings) -> ProvenanceMode:
    key = settings.c2pa_signing_key.get_secret_value() if settings.c2pa_signing_key else None
    identity = resolve_identity(settings.c2pa == "on", settings.c2pa_signing_cert, key, settings.c2pa_test_path)
    return identity.mode if identity else "off"
