"""Gemini image generation through Google's official `google-genai` SDK.

Gemini is optional: without a key, when it refuses the image (safety, no image part) or when
it stays unavailable after the SDK's bounded retries, the generation is null with the reason,
and the run still succeeds on the Flux result. Gemini cannot be told to keep pixels, so the
jewelry pixels are pasted back onto its image: the result keeps them exactly, like Flux's.
"""

from __future__ import annotations

import io
from types import ModuleType
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image
from pydantic import Field, PrivateAttr

from jewel_dagster.resources.services import Generation, ImageGenerator

if TYPE_CHECKING:  # the SDK is imported when a generation runs, not with the code location
    from google import genai
    from google.genai.types import GenerateContentResponse
from jewel_dagster.vision import imaging
from jewel_dagster.vision.imaging import Mask, RGBImage


class GeminiGenerator(ImageGenerator):
    api_key: str = Field(description="GEMINI_API_KEY; never logged.")
    model: str = "gemini-2.5-flash-image"
    base_url: str | None = Field(default=None, description="Override the API endpoint (tests, proxies).")
    timeout_seconds: float = 120.0
    attempts: int = 3
    _client: genai.Client | None = PrivateAttr(default=None)

    @property
    def backend_name(self) -> str:
        return f"gemini:{self.model}"

    def _sdk(self) -> tuple[genai.Client, ModuleType]:
        # Imported here: the SDK is heavy and every run worker imports this code location.
        from google import genai  # noqa: F811 - the run-time import of the TYPE_CHECKING one
        from google.genai import types

        if self._client is None:
            options = types.HttpOptions(
                base_url=self.base_url,
                timeout=int(self.timeout_seconds * 1000),
                retry_options=types.HttpRetryOptions(attempts=self.attempts, initial_delay=0.5, max_delay=8.0),
            )
            self._client = genai.Client(api_key=self.api_key, http_options=options)
        return self._client, types

    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        from google.genai import errors

        client, types = self._sdk()
        try:
            attributes = {"jewel.service": "Gemini", "gen_ai.request.model": self.model}
            with self.call_span("Gemini generate_content", **attributes):
                response = client.models.generate_content(
                    model=self.model,
                    contents=[prompt, types.Part.from_bytes(data=imaging.encode_png(image), mime_type="image/png")],
                    config=types.GenerateContentConfig(response_modalities=["IMAGE"], seed=seed),
                )
        except errors.APIError as exc:
            return Generation(None, self.backend_name, f"Gemini answered {exc.code}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - transport failures after the SDK's retries
            return Generation(None, self.backend_name, f"Gemini is unavailable: {type(exc).__name__}: {exc}")
        picture = _first_image(response)
        if picture is None:
            return Generation(None, self.backend_name, f"Gemini returned no image ({_refusal_reason(response)})")
        return Generation(_keep_jewelry(image, mask, picture), self.backend_name)


def _first_image(response: GenerateContentResponse) -> bytes | None:
    for candidate in response.candidates or []:
        for part in (candidate.content.parts if candidate.content else None) or []:
            if part.inline_data and (part.inline_data.mime_type or "").startswith("image/"):
                return part.inline_data.data
    return None


def _refusal_reason(response: GenerateContentResponse) -> str:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        return f"blocked: {feedback.block_reason}"
    for candidate in response.candidates or []:
        if candidate.finish_reason:
            return f"finish reason {candidate.finish_reason}"
    return "no candidates"


def _keep_jewelry(source: RGBImage, mask: Mask, picture: bytes) -> RGBImage:
    with Image.open(io.BytesIO(picture)) as generated:
        out = np.asarray(generated.convert("RGB")).copy()
    if out.shape != source.shape:
        out = cv2.resize(out, (source.shape[1], source.shape[0]), interpolation=cv2.INTER_CUBIC)
    out[mask] = source[mask]
    return out
