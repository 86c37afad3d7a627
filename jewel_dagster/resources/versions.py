"""Code versions of the assets whose output depends on a model or an algorithm.

A version names what makes the output: the model a step runs (SAM3, BiRefNet, the A100
server's refiner and Flux, Gemini's model), the parameters that change it, and an operator-set
tag for what we cannot see from here: bump `GENERATOR_VERSION` when the model behind the A100
server or Gemini changes, and every earlier generation becomes stale.

Never where a service lives (issue 28): the definitions are built at import from the
environment, and a version that followed the service URLs (or LOCAL_BACKENDS) changed with a
moved host, a missing variable in one process, or a switch to the in-process stand-ins, and the
regeneration sensor then re-generated every request. The local stand-ins stand in for the same
models under the same versions; after changing what runs, bump `GENERATOR_VERSION` to
re-generate on purpose. These strings are the ones earlier releases gave a deployment with every
service configured, so upgrading marks nothing stale there.
"""

from __future__ import annotations

from dataclasses import dataclass

from jewel_dagster.settings import PipelineSettings


@dataclass(frozen=True)
class CodeVersions:
    segmenter: str
    background_remover: str
    mask_refiner: str
    flux: str
    gemini: str


def code_versions(settings: PipelineSettings) -> CodeVersions:
    """The versions for these settings; a function of the model and output settings only."""
    tag = settings.generator_version
    # The local Flux stand-in's bleed (a demo of failing checks) changes its output: versioned
    # when set, so the default keeps the deployment's string.
    grow = f"|grow{settings.local_flux_grow_px}" if settings.local_flux_grow_px else ""
    return CodeVersions(
        segmenter="sam3",
        background_remover="birefnet",
        mask_refiner="a100",
        flux=f"a100|{tag}{grow}",
        gemini=f"gemini|{settings.gemini_model}|{tag}",
    )
