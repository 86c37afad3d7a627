"""Code versions of the assets whose output depends on a model or an algorithm.

A version names the implementation in use (local algorithm revision, or the remote service)
plus an operator-set tag for what we cannot see from here: bump `GENERATOR_VERSION` when the
model behind the A100 server or Gemini changes, and every earlier generation becomes stale.
"""

from __future__ import annotations

from dataclasses import dataclass

from jewel_dagster.settings import PipelineSettings

# Revisions of the local algorithms: bump when their output changes.
LOCAL_SEGMENTER = "local-grabcut-1"
LOCAL_BACKGROUND = "local-grabcut-1"
LOCAL_BRUSH = "local-brush-1"
LOCAL_STUDIO = "local-studio-1"


@dataclass(frozen=True)
class CodeVersions:
    segmenter: str
    background_remover: str
    mask_refiner: str
    flux: str
    gemini: str


def code_versions(settings: PipelineSettings) -> CodeVersions:
    tag = settings.generator_version
    if settings.local_backends == "instant":
        tag = f"instant|{tag}"
    if settings.a100_server_url:
        flux = f"a100|{tag}"
    else:
        grow = f"|grow{settings.local_flux_grow_px}" if settings.local_flux_grow_px else ""
        flux = f"{LOCAL_STUDIO}|sweep{grow}|{tag}"
    gemini = {
        "google": f"gemini|{settings.gemini_model}|{tag}",
        "local": f"{LOCAL_STUDIO}|radial|{tag}",
    }.get(settings.gemini_backend, "disabled")
    return CodeVersions(
        segmenter="sam3" if settings.sam3_url else LOCAL_SEGMENTER,
        background_remover="birefnet" if settings.birefnet_url else LOCAL_BACKGROUND,
        mask_refiner="a100" if settings.a100_server_url else LOCAL_BRUSH,
        flux=flux,
        gemini=gemini,
    )
