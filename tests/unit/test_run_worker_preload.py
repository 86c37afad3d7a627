"""A warm run worker starts with what its steps import at run time already imported: the
forkserver's preload (`warm_code_server.PRELOAD`) covers the Gemini SDK, which the code location
imports only when a generation runs (~0.3 s of CPU at the start of generate_images, issue 28)."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: the preloaded modules, then what the Gemini generator's first use adds.
PROBE = """
import importlib, sys
from jewel_dagster.runtime.processes.warm_code_server import PRELOAD
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
