"""The ML services the pipeline calls, as abstract Dagster resources.

Assets annotate these abstract types; `resources.py` picks an implementation: the in-process
*local* classical-vision backends (embedded default) or HTTP clients for the real services.
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
from opentelemetry import trace
from pydantic import PrivateAttr

from jewel_dagster import tracing
from jewel_dagster.contract import PARTITION_TAG
from jewel_dagster.vision.classical import PixelPoint
from jewel_dagster.vision.imaging import CanvasStroke, CanvasTransform, Mask, RGBImage


@dataclass(frozen=True)
class ZoomCheck:
    """Whether the photo needs its background removed, and the score that decided it."""

    needs_background_removal: bool
    score: float
    threshold: float

    def to_dict(self) -> dict[str, float | bool]:
        return {
            "needs_background_removal": self.needs_background_removal,
            "score": self.score,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Generation:
    """A generator's answer: an image, or None with the reason (Gemini may refuse)."""

    image: RGBImage | None
    model: str
    reason: str | None = None


class ServiceBackend(dg.ConfigurableResource, ABC):
    _run_tags: dict[str, str] = PrivateAttr(default_factory=dict)
    _run_id: str | None = PrivateAttr(default=None)
    _instance: dg.DagsterInstance | None = PrivateAttr(default=None)
    _log: logging.Logger = PrivateAttr(default_factory=lambda: logging.getLogger("jewel_dagster.services"))

    @property
    @abstractmethod
    def backend_name(self) -> str:
        """Shown in asset metadata and /health: which implementation did the work."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Remember the run: a model call's span joins the request's trace (`tracing`), and a
        call is not made for a run being cancelled (`_refuse_if_cancelled`).

        And its log: what a call logs (a retry) goes to the run's event log from any thread at
        any time. `get_dagster_logger` would not do: Dagster attaches its handler to that logger
        only while the step's own code runs, so a call thread's line written while the step
        stores an output was lost (one retry of three in a 30 % failure run)."""
        if context.run is not None:
            self._run_tags, self._run_id = dict(context.run.tags), context.run.run_id
            self._instance = context.instance
        if context.log is not None:
            self._log = context.log

    def _refuse_if_cancelled(self) -> None:
        """Dagster turns a cancel's interrupt into a step retry when the step has a RetryPolicy
        (`op_execution_error_boundary` retries interrupts): the retry then called the service
        again, and a run whose call answered within the cancel grace went on to SUCCESS after
        GET had said CANCELLED. One run-status read before each call ends that attempt instead."""
        if self._instance is None or self._run_id is None:
            return
        run = self._instance.get_run_by_id(self._run_id)
        if run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
            raise dg.Failure(description="the run was cancelled", allow_retries=False)

    @contextmanager
    def call_span(self, name: str, **attributes: Any) -> Iterator[trace.Span]:
        """A client span around one model-service call, child of the gateway's start span
        (non-recording, nearly free, when tracing is off)."""
        self._refuse_if_cancelled()
        workflow = self._run_tags.get(PARTITION_TAG)
        with (
            tracing.run_context(self._run_tags),
            tracing.tracer().start_as_current_span(
                name,
                kind=trace.SpanKind.CLIENT,
                attributes=tracing.span_attributes(workflow, self._run_id, **attributes),
            ) as span,
        ):
            yield span


class ImageManipulator(ServiceBackend, ABC):
    @abstractmethod
    def resize_to_canvas(self, image: RGBImage) -> tuple[RGBImage, CanvasTransform]: ...

    @abstractmethod
    def check_zoom(self, image: RGBImage) -> ZoomCheck: ...


class BackgroundRemover(ServiceBackend, ABC):
    @abstractmethod
    def remove_background(self, image: RGBImage) -> RGBImage: ...


class Segmenter(ServiceBackend, ABC):
    @abstractmethod
    def segment(self, image: RGBImage, points: Sequence[PixelPoint]) -> Mask:
        """The object under the positive clicks, as a mask of the image's size."""


class MaskRefiner(ServiceBackend, ABC):
    @abstractmethod
    def refine(self, mask: Mask, strokes: Sequence[CanvasStroke]) -> Mask: ...


class ImageGenerator(ServiceBackend, ABC):
    @abstractmethod
    def generate(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Generation:
        """A new image that keeps the masked jewelry pixels."""

    def prepare(self, image: RGBImage, mask: Mask, seed: int, prompt: str) -> Callable[[], Generation]:
        """`generate`, split: what can be done before the call is made now, in the caller's
        thread (an HTTP generator encodes its request), and the call itself is returned. The
        generate step prepares Flux's call before Gemini's thread and its own stores start, so
        they do not slow that encode down on the critical path (issue 28). By default nothing
        is done ahead."""
        return functools.partial(self.generate, image, mask, seed, prompt)
