"""A generator stand-in that answers only once a gate opens: what the tests of overlapping calls use."""

from __future__ import annotations

from typing import Protocol

from jewel_dagster.resources.services import Generation, ImageGenerator
from jewel_dagster.vision.imaging import Mask, RGBImage


class Gate(Protocol):
    """A `threading.Barrier` or `threading.Event`: `wait()` returns once the others are there."""

    def wait(self, timeout: float | None = None) -> object: ...


def waiting_generator(gate: Gate) -> ImageGenerator:
    """A generator that returns the image unchanged once `gate.wait()` returned: called one after
    the other where the code should overlap them, the barrier's timeout fails the test. (A class
    made here: generators are Dagster resources, pydantic models that take no other attribute.)"""

    class WaitingGenerator(ImageGenerator):
        @property
        def backend_name(self) -> str:
            return "test-barrier"

        def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
            gate.wait()
            return Generation(image=image.copy(), model="test-barrier")

    return WaitingGenerator()
