"""The bookkeeping of a step that materializes several assets (a `multi_asset` with `can_subset`).

Inside the step the values pass in memory; what the step needs and does not make in this run (an
asset of an earlier step, or one of its own the run did not select) is loaded through the IO
manager, from this run's lineage first (`BlobIOManager.load_value`). Each output checks first
that the run was not cancelled, so nothing is materialized once a cancel was asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg

from jewel_dagster.defs.cancellation import stop_if_cancelled
from jewel_dagster.resources.io_manager import BlobIOManager, materialization_in_runs


class StepValues:
    """Which of the step's assets to make, and every value the step has at hand."""

    def __init__(self, context: dg.AssetExecutionContext, io_manager: BlobIOManager) -> None:
        # A step of a cancelled run does not start: also the retry Dagster makes of a step whose
        # cancel interrupt its RetryPolicy turned into a step retry.
        stop_if_cancelled(context, "starting the step")
        self._context = context
        self._io = io_manager
        self._values: dict[str, Any] = {}
        self._selected = {key.path[-1] for key in context.selected_asset_keys}
        if context.retry_number > 0:
            # A retried step keeps what its earlier attempt already materialized: loaded, not
            # made (and materialized) twice.
            done = {
                name
                for name in self._selected
                if materialization_in_runs(context.instance, name, context.partition_key, [context.run_id])
            }
            self._selected -= done

    def makes(self, *names: str) -> bool:
        """Whether this run makes any of these assets in this step."""
        return any(str(name) in self._selected for name in names)

    def get(self, name: str) -> Any:
        """The value of `name`: made earlier in this step, else loaded from storage."""
        name = str(name)
        if name not in self._values:
            self._values[name] = self._io.load_value(
                self._context.instance, self._context.run, name, self._context.partition_key
            )
        return self._values[name]

    def keep(self, name: str, value: Any) -> None:
        """A value made in this step that is not (or not yet) an output."""
        self._values[str(name)] = value

    def emit(self, name: str, value: Any, metadata: dict[str, Any]) -> Iterator[dg.MaterializeResult]:
        """The materialization of `name` when the run selected it (`yield from` it); the value
        is kept for the rest of the step either way.

        The blob is stored here, before the materialization is reported, and the result carries
        no value: Dagster then calls no IO manager and writes no HANDLED_OUTPUT event (11 a
        request, each repeating the blob's names). The metadata, the blob's included, goes on
        the asset's materialization only (`add_asset_metadata`): given to the result, Dagster
        also copies it, preview and all, into the STEP_OUTPUT event, which neither the UI's
        asset pages nor the gateway read (issue 28)."""
        name = str(name)
        self._values[name] = value
        if name in self._selected:
            stop_if_cancelled(self._context, f"materializing {name}")
            stored = self._io.store(name, self._context.partition_key, self._context.run.run_id, value)
            self._context.add_asset_metadata({**metadata, **stored}, asset_key=name)
            yield dg.MaterializeResult(asset_key=name)

    def check_selected(self, check_name: str) -> bool:
        return any(key.name == check_name for key in self._context.selected_asset_check_keys)
