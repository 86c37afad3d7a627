"""Where Dagster's private APIs may be used: in jewel_dagster/runtime only, each use listed.

`lint-imports` (make lint) checks the rest of the import rules; it sees external packages only
by their top-level name, so `dagster._...` is checked here.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from devtools.stack import REPO_ROOT

RUNTIME = REPO_ROOT / "jewel_dagster" / "runtime"
CHECKED = ["jewel_dagster", "gateway", "devtools", "benchmarks", "tests"]


def _private_dagster_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [n for n in names if n.split(".")[0].startswith("dagster") and "._" in n]
    return found


def test_private_dagster_modules_are_imported_in_the_runtime_folder_only() -> None:
    outside = {
        str(path.relative_to(REPO_ROOT)): imports
        for folder in CHECKED
        for path in (REPO_ROOT / folder).rglob("*.py")
        if RUNTIME not in path.parents and (imports := _private_dagster_imports(path))
    }
    assert outside == {}


def test_each_runtime_module_lists_the_private_symbols_it_uses() -> None:
    """A reader (or a Dagster upgrade) finds every private use in the module docstrings."""
    for path in RUNTIME.glob("*.py"):
        imports = _private_dagster_imports(path)
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if imports:
            assert "checked against dagster 1.13.27" in docstring, path.name
            for module in imports:
                assert module in docstring, f"{path.name} does not list {module}"


def test_the_checker_sees_a_private_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import dagster as dg\nfrom dagster._core.events import X\nimport dagster_postgres._x\n")
    assert _private_dagster_imports(sample) == ["dagster._core.events", "dagster_postgres._x"]


def test_the_request_models_load_no_dagster() -> None:
    """The gateway's request path validates bodies with `gateway.schemas`: importing it must not
    pay for Dagster (~1 s and ~100 MB), so the request models are plain pydantic
    (jewel_dagster/request_inputs.py) that the pipeline's config classes derive from."""
    code = "import sys, gateway.schemas; print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster')[:5])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# The first segments of blob keys and claim names (jewel_dagster/storage_layout.py), and the last
# segments that name a request's blobs: spelled in that module only.
_KEY_WORDS = (
    "requests|strokes|webhooks|removed|starts|start-cancels|start-gateways|claims|compute-logs"
    "|idempotency|continue|start-takeover|upload"
)
# A key begins a string (never with '/': those are HTTP routes) or follows an f-string field.
# Bare words are names of other things (the `requests` partitions, the `webhooks` route tag), but
# the compute log manager's prefix is a bare folder name.
_KEY_SPELLING = re.compile(rf"(?:^|\{{\}}/)(?:{_KEY_WORDS})(?:/|\.|\{{\}})|\{{\}}/(?:{_KEY_WORDS})$|^compute-logs$")
STORAGE_LAYOUT = REPO_ROOT / "jewel_dagster" / "storage_layout.py"
KEY_CHECKED = ["jewel_dagster", "gateway", "devtools", "benchmarks"]


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
    }


def _blob_key_spellings(path: Path) -> list[str]:
    """String literals (f-strings with their fields as `{}`) that spell a blob key or claim name."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    inside_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(p.value if isinstance(p, ast.Constant) else "{}" for p in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docs or id(node) in inside_fstrings:
                continue
            text = node.value
        else:
            continue
        if _KEY_SPELLING.search(text):
            found.append(f"{node.lineno}: {text}")
    return found


def test_only_the_storage_layout_spells_blob_keys() -> None:
    """Both sides read each other's blobs (tombstones, webhook URLs, artifacts): one module builds
    every key, so no reader and writer can disagree on a path."""
    outside = {
        str(path.relative_to(REPO_ROOT)): spellings
        for folder in KEY_CHECKED
        for path in (REPO_ROOT / folder).rglob("*.py")
        if path != STORAGE_LAYOUT and (spellings := _blob_key_spellings(path))
    }
    assert outside == {}


def test_the_key_checker_sees_a_key_and_leaves_routes_alone(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Docs may say requests/<id>/upload."""\n'
        'a = f"webhooks/{key}.json"\nb = f"{folder}/strokes/{k}.json"\nc = "removed/"\nd = f"{rid}/upload"\n'
        'e = "/webhooks/secret"\nf = "jewel/webhook-key"\ng = "requests"\nh = "compute-logs"\n'
    )
    assert _blob_key_spellings(sample) == [
        "2: webhooks/{}.json",
        "3: {}/strokes/{}.json",
        "4: removed/",
        "5: {}/upload",
        "9: compute-logs",
    ]
    assert _blob_key_spellings(STORAGE_LAYOUT)  # the layout itself spells them all
