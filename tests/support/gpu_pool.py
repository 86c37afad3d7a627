"""The steps that must hold a `gpu` pool slot, named by the tests rather than read from the code
under test: read from the code, a step that lost its `pool=` would simply drop out of what the
tests check, and with every `pool=` gone they would check nothing.

One constant: when the assets are regrouped into other steps, update it here.
"""

from __future__ import annotations

GPU_POOL_NAME = "gpu"  # README, Deployment: `GPU_POOL_SIZE` slots of the `gpu` pool
# Every step that calls a GPU model service (the A100 server's refinement, `refine_mask`, only
# when A100_SERVER_URL is set: the local brush is CPU work).
# Issue 28 grouped the eleven assets into four steps: the background removal and the mask in
# `segment_jewelry`, the generations and their metrics in `generate_images`.
GPU_STEPS = frozenset({"segment_jewelry", "generate_images"})
A100_REFINER_STEP = "refine_mask"
