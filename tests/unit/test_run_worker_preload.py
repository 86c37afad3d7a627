"""A warm run worker starts with what its steps import at run time already imported: the
forkserver's preload (`warm_code_server.PRELOAD`) covers the Gemini SDK, which the code location
imports only when a generation runs (~0.3 s of CPU at the start of generate_images, issue 28),
and what Dagster and Pillow import lazily between the worker's fork and prepare_canvas's first
model call (the job's reconstruction, the execution plan, Pillow's codecs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter: the preloaded modules, then what the Gemini generator's first use adds.
PROBE = """
import importlib, sys
import os
from jewel_dagster.runtime.processes.warm_code_server import CODE_LOCATION_ENV, PRELOAD
os.environ[CODE_LOCATION_ENV] = "jewel_dagster.definitions"  # as the warm code server sets it
for name in PRELOAD:
    importlib.import_module(name)
from jewel_dagster.resources.gemini import GeminiGenerator
before = set(sys.modules)
GeminiGenerator(api_key="not-used")._sdk()
print(" ".join(sorted(name for name in set(sys.modules) - before if name.startswith("google"))))
"""


def test_the_gemini_sdk_is_preloaded_for_run_workers() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", f"imported at the first generation, not preloaded: {out.stdout.strip()}"


# What a run worker does from its fork to the resize call: its instance, its job and execution
# plan (Dagster's core_execute_run), then prepare_canvas's decode of the photo and its first HTTP
# client (httpx imports its transport at a process's first client).
RUN_START_PROBE = """
import importlib, sys
from pathlib import Path
import os
from jewel_dagster.runtime.processes.warm_code_server import CODE_LOCATION_ENV, PRELOAD
os.environ[CODE_LOCATION_ENV] = "jewel_dagster.definitions"  # as the warm code server sets it
for name in PRELOAD:
    importlib.import_module(name)
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import create_execution_plan
from devtools.stack import prepare_dagster_home
prepare_dagster_home({"DAGSTER_HOME": sys.argv[1]})
with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    ref = instance.get_ref()
before = set(sys.modules)
with dg.DagsterInstance.from_ref(ref):
    pass
job = ReconstructableRepository.for_module("jewel_dagster.definitions", "defs", None)
job = job.get_reconstructable_job("jewelry_generation")
job.get_definition()
try:
    create_execution_plan(job, run_config={})
except dg.DagsterInvalidConfigError:
    pass  # a request's run config is not needed for what the plan imports
from jewel_dagster.vision import imaging
imaging.decode_image(Path("samples/ring.jpg").read_bytes())
from jewel_dagster.resources.http_services import HttpImageManipulator
HttpImageManipulator(base_url="http://127.0.0.1:9/image-manipulator")._client().close()
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_a_run_worker_imports_nothing_on_its_way_to_the_first_model_call(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RUN_START_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO_ROOT,
    )
    assert out.stdout.strip() == "", f"imported in the run worker, not preloaded: {out.stdout.strip()}"
