"""The steps that must hold a `gpu` pool slot, named by the tests rather than read from the code
under test: read from the code, a step that lost its `pool=` would simply drop out of what the
tests check, and with every `pool=` gone they would check nothing.

One constant: when the assets are regrouped into other steps, update it here.

`held_pool` makes a request wait in the pool's line on a running stack, as behind other
requests, for as long as a test needs it to (the page's queue position, tests/e2e/test_live.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from tests.support.e2e_stack import wait_until

GPU_POOL_NAME = "gpu"  # README, Deployment: `GPU_POOL_SIZE` slots of the `gpu` pool
# Every step that calls a GPU model service, whatever the settings. Issue 28 grouped the eleven
# assets into three steps: the background removal and the mask in `segment_jewelry`; the brush
# strokes, the final mask, the generations and their metrics in `generate_images`.
GPU_STEPS = frozenset({"segment_jewelry", "generate_images"})

# What the stand-ins of `held_pool` claim as: a real GPU step's name, so the gateway's estimate
# gives them that step's median length (gateway/eta.py, pool_starts).
STAND_IN_STEP = "segment_jewelry"


@contextmanager
def held_pool(dagster_home: str, waiting: int, timeout: float = 120.0) -> Iterator[None]:
    """Every slot of the stack's `gpu` pool held by a stand-in step and `waiting` stand-ins in the
    pool's line, until the block ends: a request's GPU step then waits behind `waiting` others.

    Stand-ins are claims of run ids Dagster does not know, made through the instance's event log
    storage as a step's are: run monitoring (which frees the slots of ended runs) leaves them
    alone, so they are freed here whatever happens (a slot left claimed would wedge the stack's
    pool for every test after), the line first so that no stand-in is given a freed slot.
    """
    tag = uuid.uuid4().hex[:8]
    with dg.DagsterInstance.from_config(dagster_home) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default(GPU_POOL_NAME)  # a fresh stack's slots come at a first claim
        slots = storage.get_concurrency_info(GPU_POOL_NAME).slot_count
        holders = [f"held-{tag}-{i}" for i in range(slots)]
        line = [f"ahead-{tag}-{i}" for i in range(waiting)]
        try:

            def all_held() -> bool:  # a slot a real step still holds is taken once it is given back
                claims = [storage.claim_concurrency_slot(GPU_POOL_NAME, run_id, STAND_IN_STEP) for run_id in holders]
                return all(claim.is_claimed for claim in claims)

            wait_until(all_held, f"every {GPU_POOL_NAME} pool slot held by a stand-in", timeout)
            for run_id in line:
                assert not storage.claim_concurrency_slot(GPU_POOL_NAME, run_id, STAND_IN_STEP).is_claimed
            yield
        finally:
            for run_id in line + holders:
                storage.free_concurrency_slot_for_step(run_id, STAND_IN_STEP)
