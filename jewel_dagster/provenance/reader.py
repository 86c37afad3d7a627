"""Reads a C2PA manifest back, with the same library that signed it: what `jewel verify` prints,
what the gateway tells the web page ("Made with AI"), what the tests check.

Only the file's own bytes are read: no remote manifest is fetched and no OCSP is asked, so a
verification never waits on the network (an outside call a caller's file could choose).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import c2pa

from jewel_dagster.provenance.manifest import (
    GENERATION_ASSERTION,
    MADE_WITH_AI,
    TRAINED_ALGORITHMIC_MEDIA,
    sniff_mime,
)

# Not a failure of the file: the test certificate (or a private CA) is on no trust list here.
UNTRUSTED = "signingCredential.untrusted"
_READ_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


@dataclass(frozen=True)
class ManifestReport:
    """The active manifest of a file, and whether its bindings and signature hold."""

    state: str  # C2PA's validation state: "Valid", "Trusted" or "Invalid"
    failures: list[str]  # validation codes that failed (the untrusted certificate aside)
    manifest: dict[str, Any]  # the active manifest as the library answers it
    store: dict[str, Any] = field(repr=False)  # the whole manifest store (every manifest, every status)

    @property
    def valid(self) -> bool:
        return self.state in ("Valid", "Trusted") and not self.failures

    def created_action(self) -> dict[str, Any] | None:
        for assertion in self.manifest.get("assertions", []):
            if assertion.get("label", "").startswith("c2pa.actions"):
                for action in assertion.get("data", {}).get("actions", []):
                    if action.get("action") == "c2pa.created":
                        return dict(action)
        return None

    def generation(self) -> dict[str, Any]:
        """Our own assertion: generator, backend, workflow id, time, the input photo's hash."""
        for assertion in self.manifest.get("assertions", []):
            if assertion.get("label") == GENERATION_ASSERTION:
                return dict(assertion.get("data", {}))
        return {}

    @property
    def made_with_ai(self) -> bool:
        action = self.created_action()
        return action is not None and action.get("digitalSourceType") == TRAINED_ALGORITHMIC_MEDIA

    def summary(self) -> dict[str, Any]:
        """The few fields a person reads (the web page's label, the CLI's first lines)."""
        generation = self.generation()
        signature = self.manifest.get("signature_info", {})
        return {
            "label": MADE_WITH_AI if self.made_with_ai and self.valid else None,
            "madeWithAI": self.made_with_ai,
            "valid": self.valid,
            "validationState": self.state,
            "failures": self.failures,
            "generator": generation.get("generator"),
            "backend": generation.get("backend"),
            "workflowId": generation.get("workflowId"),
            "createdAt": generation.get("createdAt"),
            "signedBy": signature.get("issuer"),
        }


def read_manifest(data: bytes, mime: str | None = None) -> ManifestReport | None:
    """The file's manifest report, None when it carries no C2PA manifest.

    Raises c2pa.C2paError for a file the library cannot read at all (not an image it knows).
    """
    fmt = mime or sniff_mime(data)
    context = c2pa.Context.from_dict(_READ_SETTINGS)
    reader = c2pa.Reader.try_create(fmt, io.BytesIO(data), context=context)
    if reader is None:
        return None
    with reader:
        store = json.loads(reader.json())
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = [item["code"] for item in results.get("failure", []) if item.get("code") != UNTRUSTED]
    return ManifestReport(
        state=str(store.get("validation_state", "Invalid")), failures=failures, manifest=active, store=store
    )
