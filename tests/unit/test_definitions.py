from jewel_dagster.contract import FULL_JOB, GENERATE_JOB, PREPROCESS_JOB, SEED_STEP_OF_OP, STEP_PROGRESS, AssetName
from jewel_dagster.definitions import defs


def test_every_job_resolves() -> None:
    for name in (FULL_JOB, PREPROCESS_JOB, GENERATE_JOB):
        job = defs.resolve_job_def(name)
        assert job.partitions_def is not None and job.partitions_def.name == "requests"


def test_every_step_maps_to_a_seed_step() -> None:
    full = defs.resolve_job_def(FULL_JOB)
    op_names = {node.name for node in full.graph.nodes}
    # Named here, not read from the code under test: a full request is these three steps (issue 28).
    assert op_names == {"prepare_canvas", "segment_jewelry", "generate_images"}
    assert set(SEED_STEP_OF_OP) == op_names
    assert set(SEED_STEP_OF_OP.values()) <= set(STEP_PROGRESS)


def test_every_asset_has_its_seed_step_and_its_op() -> None:
    from jewel_dagster.contract import OP_OF_ASSET, SEED_STEP_OF_ASSET

    graph = defs.resolve_asset_graph()
    names = {key.path[-1] for key in graph.get_all_asset_keys()}
    assert names == set(SEED_STEP_OF_ASSET) == set(OP_OF_ASSET) == set(AssetName)
    ops = {name: defs.get_assets_def(name).node_def.name for name in names}
    assert ops == OP_OF_ASSET
    # A step's seed steps come in the order of the seed table: progress never goes back.
    order = list(STEP_PROGRESS)
    for op, first in SEED_STEP_OF_OP.items():
        seeds = [SEED_STEP_OF_ASSET[name] for name, owner in OP_OF_ASSET.items() if owner == op]
        assert min(seeds, key=order.index) == first, op


def test_lineage_shows_every_dependency() -> None:
    graph = defs.resolve_asset_graph()
    parents = {key.path[-1]: {p.path[-1] for p in graph.get(key).parent_keys} for key in graph.get_all_asset_keys()}
    assert parents["flux_metrics"] == {"flux_generation", "final_mask", "jewelry_mask"}  # it reads the clicks
    assert parents["jewelry_mask"] == {"background_removed_image", "canvas_transform"}
    assert parents["refined_mask"] == {"jewelry_mask", "canvas_transform"}
    assert parents["gemini_generation"] == {"background_removed_image", "final_mask"}


def test_every_asset_can_be_materialized_alone() -> None:
    for name in AssetName:
        assets_def = defs.get_assets_def(name)
        assert assets_def.can_subset, name


def test_every_asset_is_partitioned_per_request() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).partitions_def.name == "requests", key


def test_job_step_orders_match_the_jobs() -> None:
    from jewel_dagster.contract import JOB_OPS

    assert JOB_OPS == {
        "jewelry_generation": ["prepare_canvas", "segment_jewelry", "generate_images"],
        "jewelry_preprocess": ["prepare_canvas", "segment_jewelry"],
        "jewelry_generate": ["generate_images"],
        "jewelry_regenerate": ["generate_images"],
    }
    for name, ops in JOB_OPS.items():
        job = defs.resolve_job_def(name)
        assert {node.name for node in job.graph.nodes} == set(ops), name
        # Execution order: every op comes after the ops it depends on.
        position = {op: i for i, op in enumerate(ops)}
        for node in job.graph.nodes:
            for upstream in job.graph.dependency_structure.all_upstream_outputs_from_node(node.name):
                assert position[upstream.node_name] < position[node.name]


def test_only_the_model_steps_hold_a_gpu_slot() -> None:
    # CPU work in the GPU pool queued other requests' GPU steps behind it (issue 14); the brush
    # strokes' bounded CPU now rides in `generate_images` (issue 28, defs/assets.py says why).
    from jewel_dagster.contract import GPU_POOL
    from jewel_dagster.defs.assets import generate_images, prepare_canvas, segment_jewelry

    assert prepare_canvas.op.pool is None  # decoding, the canvas, the zoom check: CPU only
    assert segment_jewelry.op.pool == GPU_POOL
    assert generate_images.op.pool == GPU_POOL


def test_code_versions_follow_the_models_not_where_the_services_live() -> None:
    # Issue 28: a version that followed the service URLs (or LOCAL_BACKENDS) changed with a moved
    # host, or a variable missing in one process, and the regeneration sensor then re-generated
    # every request.
    from jewel_dagster.resources.versions import code_versions
    from jewel_dagster.settings import PipelineSettings

    def settings(**changes: object) -> PipelineSettings:
        return PipelineSettings.model_validate({"generator_version": "7", **changes})

    local = settings(local_backends="classical")
    for elsewhere in (
        settings(
            local_backends="instant",
            sam3_url="http://sam3:8000",
            birefnet_url="http://birefnet:8000",
            a100_server_url="http://a100:8000",
            image_manipulator_url="http://manipulator:8000",
            gemini_base_url="http://gemini-proxy:8000",
        ),
        settings(a100_server_url="https://a100.example.com/v2/"),
        settings(sam3_url="http://10.0.0.9:9000"),
    ):
        assert code_versions(elsewhere) == code_versions(local)
    # What changes the output does change them.
    assert code_versions(settings(generator_version="8")).flux != code_versions(local).flux
    assert code_versions(settings(gemini_model="gemini-3-image")).gemini != code_versions(local).gemini
    assert code_versions(settings(local_flux_grow_px=6)).flux != code_versions(local).flux


def test_exactly_the_gpu_steps_hold_a_gpu_slot() -> None:
    """The expected steps are named in tests/support/gpu_pool.py, not read from the assets."""
    from tests.support.gpu_pool import GPU_POOL_NAME, GPU_STEPS

    expected = GPU_STEPS
    for name in (FULL_JOB, PREPROCESS_JOB, GENERATE_JOB):
        nodes = defs.resolve_job_def(name).graph.nodes
        in_pool = {node.name for node in nodes if node.definition.pool == GPU_POOL_NAME}
        assert in_pool == expected & {node.name for node in nodes}, name
    assert {node.name for node in defs.resolve_job_def(FULL_JOB).graph.nodes} >= expected
