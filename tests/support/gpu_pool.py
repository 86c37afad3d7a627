"""The steps that must hold a `gpu` pool slot, named by the tests rather than read from the code
under test: read from the code, a step that lost its `pool=` would simply drop out of what the
tests check, and with every `pool=` gone they would check nothing.

One constant: when the assets are regrouped into other steps, update it here.
"""

from __future__ import annotations

GPU_POOL_NAME = "gpu"  # README, Deployment: `GPU_POOL_SIZE` slots of the `gpu` pool
# Every step that calls a GPU model service (the A100 server's refinement, `refined_mask`, only
# when A100_SERVER_URL is set: the local brush is CPU work).
GPU_STEPS = frozenset({"background_removed_image", "jewelry_mask", "generations", "flux_metrics"})
A100_REFINER_STEP = "refined_mask"
