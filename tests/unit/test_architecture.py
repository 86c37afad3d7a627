"""Where Dagster's private APIs may be used: in jewel_dagster/runtime only, each use listed.

`lint-imports` (make lint) checks the rest of the import rules; it sees external packages only
by their top-level name, so `dagster._...` is checked here.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from devtools.stack import REPO_ROOT
from jewel_dagster.runtime import touchpoints

RUNTIME = REPO_ROOT / "jewel_dagster" / "runtime"
CHECKED = ["jewel_dagster", "gateway", "devtools", "benchmarks", "tests"]


@functools.cache
def _parsed(path: Path) -> ast.Module:
    """A file's syntax tree, parsed once for all the checks here (each walks every file)."""
    return ast.parse(path.read_text(), str(path))


def _private_dagster_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(_parsed(path)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from dagster import _check` reaches a private module too, as `import dagster._check` does
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
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
    for path in RUNTIME.rglob("*.py"):
        imports = _private_dagster_imports(path)
        docstring = ast.get_docstring(_parsed(path)) or ""
        if imports:
            assert "checked against dagster 1.13.27" in docstring, path.name
            for module in imports:
                assert module in docstring, f"{path.name} does not list {module}"


def test_the_checker_sees_a_private_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    lines = ["import dagster as dg", "from dagster._core.events import X", "import dagster_postgres._x"]
    sample.write_text("\n".join([*lines, "from dagster import _check"]) + "\n")
    assert _private_dagster_imports(sample) == ["dagster._core.events", "dagster_postgres._x", "dagster._check"]


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
    "|idempotency|continue|start-takeover|upload|webhook-outbox|webhook-deliveries|webhook-attempts"
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
    tree = _parsed(path)
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


# ---------------------------------------------------------------- private attributes and methods

_DAGSTER_PACKAGES = ["dagster", "dagster_azure", "dagster_postgres", "dagster_celery", "dagster_graphql"]
_DEFINED = re.compile(r"(?:self\.|def |class |^\s*)(_[A-Za-z]\w*)\b", re.MULTILINE)
# namedtuple's own API: public, despite the underscore.
_NAMEDTUPLE_API = {"_replace", "_fields", "_asdict", "_make"}


@functools.cache
def _dagster_private_names() -> frozenset[str]:
    """Every `_name` the installed Dagster packages define (attributes, methods, classes)."""
    names: set[str] = set()
    for package in _DAGSTER_PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None, package
        for path in Path(spec.origin).parent.rglob("*.py"):
            names.update(_DEFINED.findall(path.read_text(errors="ignore")))
    return frozenset(names)


def _private_uses(path: Path) -> dict[str, bool]:
    """Private names used as attributes (or by getattr/setattr/hasattr), each with whether it is
    used on an object other than self/cls; private methods a class defines count as used on self."""
    uses: dict[str, bool] = {}
    tree = _parsed(path)
    for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
        for method in cls.body:  # a method of a subclass may override Dagster's private one
            if isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef) and method.name.startswith("_"):
                if not method.name.startswith("__"):
                    uses[method.name] = False
    for node in ast.walk(tree):
        name, foreign = None, True
        if isinstance(node, ast.Attribute):
            name = node.attr
            foreign = not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) > 1:
            if node.func.id in ("getattr", "setattr", "hasattr") and isinstance(node.args[1], ast.Constant):
                name = str(node.args[1].value)
        if name and name.startswith("_") and not name.startswith("__") and name not in _NAMEDTUPLE_API:
            uses[name] = uses.get(name, False) or foreign
    return uses


def _defined_by_us(paths: list[Path]) -> set[str]:
    """Names our own code defines: attributes it assigns on self, class-level fields, functions, classes."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(_parsed(path)):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    names.add(node.attr)  # (set on another object, it is that object's attribute)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _outside_runtime() -> list[Path]:
    return [path for folder in CHECKED for path in (REPO_ROOT / folder).rglob("*.py") if RUNTIME not in path.parents]


def _foreign_private_attributes(paths: list[Path], ours: set[str]) -> dict[str, set[str]]:
    """{name: files} of private Dagster names these files reach on objects other than self."""
    dagster = _dagster_private_names()
    found: dict[str, set[str]] = {}
    for path in paths:
        for name, foreign in _private_uses(path).items():
            if foreign and name in dagster and name not in ours:
                found.setdefault(name, set()).add(_relative(path))
    return found


def test_the_touchpoint_table_names_the_installed_dagster() -> None:
    """An upgrade of Dagster fails here first: check each touchpoint, then the version."""
    assert importlib.metadata.version("dagster") == touchpoints.DAGSTER_VERSION


def test_no_private_dagster_attribute_is_reached_outside_the_runtime_folder() -> None:
    """Outside jewel_dagster/runtime, no `_attribute` of a Dagster object; tests reach only the
    ones the table lists (canaries that check what runtime/ relies on)."""
    paths = _outside_runtime()
    found = _foreign_private_attributes(paths, _defined_by_us(paths))
    outside = {name: files for name, files in found.items() if any(not f.startswith("tests/") for f in files)}
    unlisted = {name: files for name, files in found.items() if name not in touchpoints.PRIVATE_ATTRIBUTES}
    assert outside == {} and unlisted == {}


def test_the_runtime_folder_lists_every_private_dagster_attribute_it_uses() -> None:
    dagster = _dagster_private_names()
    used = set()
    for path in RUNTIME.rglob("*.py"):
        used |= {name for name in _private_uses(path) if name in dagster}
    used -= set(touchpoints.OURS)
    assert used - set(touchpoints.PRIVATE_ATTRIBUTES) == set(), "add them to runtime/touchpoints.py"
    canaries = _foreign_private_attributes(_outside_runtime(), set())
    assert set(touchpoints.PRIVATE_ATTRIBUTES) - used - set(canaries) == set(), "stale rows in the table"


def _non_public_dagster_methods() -> dict[str, set[str]]:
    """{name: files} of DagsterInstance/storage members outside runtime/ that Dagster does not
    mark public (`@public`) on any of those classes, and that our code does not define itself."""
    classes = touchpoints.instance_classes()

    @functools.cache  # asked once per attribute name, not per use: dir() of every class is slow
    def non_public(name: str) -> bool:
        members = [getattr(cls, name) for cls in classes if name in dir(cls)]
        return bool(members) and not any(touchpoints.is_public(member) for member in members)

    paths = _outside_runtime()
    ours = _defined_by_us(paths)
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(_parsed(path)):
            if isinstance(node, ast.Attribute) and not node.attr.startswith("_") and node.attr not in ours:
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) and non_public(
                    node.attr
                ):
                    found.setdefault(node.attr, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def test_every_non_public_dagster_method_used_outside_the_runtime_folder_is_listed() -> None:
    found = _non_public_dagster_methods()
    assert {n: f for n, f in found.items() if n not in touchpoints.NON_PUBLIC_METHODS} == {}
    assert set(touchpoints.NON_PUBLIC_METHODS) - set(found) == set(), "stale rows in the table"


def test_the_private_attribute_checker_sees_a_dagster_internal(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("server._mp_ctx = ctx\nself._executions = {}\nrow._replace(a=1)\ngetattr(s, '_engine')\n")
    assert _private_uses(sample) == {"_mp_ctx": True, "_executions": False, "_engine": True}
    assert set(_foreign_private_attributes([sample], set())) == {"_mp_ctx", "_engine"}
