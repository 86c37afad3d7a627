from jewel_dagster.contract import FULL_JOB, GENERATE_JOB, PREPROCESS_JOB, SEED_STEP_OF_OP, STEP_PROGRESS
from jewel_dagster.definitions import defs


def test_every_job_resolves() -> None:
    for name in (FULL_JOB, PREPROCESS_JOB, GENERATE_JOB):
        job = defs.resolve_job_def(name)
        assert job.partitions_def is not None and job.partitions_def.name == "requests"


def test_every_step_maps_to_a_seed_step() -> None:
    full = defs.resolve_job_def(FULL_JOB)
    op_names = {node.name for node in full.graph.nodes}
    assert op_names == set(SEED_STEP_OF_OP)
    assert set(SEED_STEP_OF_OP.values()) <= set(STEP_PROGRESS)


def test_every_asset_is_partitioned_per_request() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).partitions_def.name == "requests", key


def test_job_step_orders_match_the_jobs() -> None:
    from jewel_dagster.contract import JOB_OPS

    for name, ops in JOB_OPS.items():
        job = defs.resolve_job_def(name)
        assert {node.name for node in job.graph.nodes} == set(ops), name
        # Execution order: every op comes after the ops it depends on.
        position = {op: i for i, op in enumerate(ops)}
        for node in job.graph.nodes:
            for upstream in job.graph.dependency_structure.all_upstream_outputs_from_node(node.name):
                assert position[upstream.node_name] < position[node.name]


def test_the_local_rasteriser_holds_no_gpu_slot() -> None:
    # CPU work in the GPU pool queued other requests' GPU steps behind it (issue 14).
    from jewel_dagster.contract import GPU_POOL
    from jewel_dagster.defs.assets import jewelry_mask, refined_mask, refiner_pool
    from jewel_dagster.settings import PipelineSettings, get_settings

    assert refiner_pool(PipelineSettings(a100_server_url=None)) is None
    assert refiner_pool(PipelineSettings(a100_server_url="http://a100.example")) == GPU_POOL
    if not get_settings().a100_server_url:
        assert refined_mask.op.pool is None
    assert jewelry_mask.op.pool == GPU_POOL


def test_exactly_the_gpu_steps_hold_a_gpu_slot() -> None:
    """The expected steps are named in tests/support/gpu_pool.py, not read from the assets."""
    from jewel_dagster.settings import get_settings
    from tests.support.gpu_pool import A100_REFINER_STEP, GPU_POOL_NAME, GPU_STEPS

    expected = GPU_STEPS | ({A100_REFINER_STEP} if get_settings().a100_server_url else set())
    for name in (FULL_JOB, PREPROCESS_JOB, GENERATE_JOB):
        nodes = defs.resolve_job_def(name).graph.nodes
        in_pool = {node.name for node in nodes if node.definition.pool == GPU_POOL_NAME}
        assert in_pool == expected & {node.name for node in nodes}, name
    assert {node.name for node in defs.resolve_job_def(FULL_JOB).graph.nodes} >= expected
