"""Architecture invariants checked from the source: no import cycle among the package's modules, and only the
results index speaks SQL.

The import graph is read with ``ast`` (nothing is imported): top-level imports, imports inside functions and
imports under ``if TYPE_CHECKING:`` all count, and importing ``a.b.c`` also counts as importing the packages
``a.b`` and ``a`` (their ``__init__`` runs first). A cycle is a strongly connected component of more than
one module. The layer contracts themselves are checked by ``lint-imports`` (pyproject.toml,
``[tool.importlinter]``), which ``.ci/run`` runs.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "sae_lens_autointerp"


def package_modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` of every module under ``package_dir``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_imports(path: Path, name: str, is_package: bool, known: set[str]) -> Iterator[tuple[str, str]]:
    """``(imported module, where)`` for every import in one file; ``where`` is ``"top"``, ``"function"`` or
    ``"type_checking"``. Only modules in ``known`` are reported (``from x import name`` resolves to the module
    ``x.name`` when there is one, else to ``x``)."""
    package = name if is_package else name.rpartition(".")[0]

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]

    def walk(node: ast.AST, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in targets(node):
                while target and target not in known:  # `import a.b.attr` style: the nearest module
                    target = target.rpartition(".")[0]
                if target:
                    yield target, where
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from walk(child, "type_checking")
            for child in node.orelse:
                yield from walk(child, where)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and where == "top":
            where = "function"
        for child in ast.iter_child_nodes(node):
            yield from walk(child, where)

    yield from walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), "top")


def import_graph(
    package_dir: Path, kinds: tuple[str, ...] = ("top", "function", "type_checking")
) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (of the given kinds), parent packages included."""
    modules = package_modules(package_dir)
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_package) in modules.items():
        for target, where in module_imports(path, name, is_package, known):
            if where not in kinds or target == name:
                continue
            graph[name].add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):  # `import a.b.c` runs a/__init__ and a/b/__init__ first
                parent = ".".join(parts[:i])
                if parent in known and not (name == parent or name.startswith(parent + ".")):
                    graph[name].add(parent)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found, key=len, reverse=True)


@pytest.mark.parametrize(
    "kinds",
    [("top",), ("top", "function"), ("top", "function", "type_checking")],
    ids=["top-level", "+function-level", "+TYPE_CHECKING"],
)
def test_package_has_no_import_cycle(kinds):
    graph = import_graph(PACKAGE_DIR, kinds)
    assert len(graph) > 40 and "sae_lens_autointerp.records" in graph  # the walker sees the whole package
    assert cycles(graph) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


@pytest.mark.parametrize("where", ["top", "function", "type_checking"])
def test_walker_finds_a_cycle_through_each_kind_of_import(tmp_path, where):
    """The checker itself: a two-module loop closed by a top-level, a function-level or a TYPE_CHECKING
    import, a relative one through a subpackage (whose ``__init__`` is part of the loop) is found."""
    closing = {
        "top": "from ..a import A\n",
        "function": "def f():\n    from .. import a\n",
        "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\n",
    }[where]
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .sub.b import B\nA = 1\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/b.py": closing + "B = 2\n",
            "pkg/c.py": "import pkg.a\n",  # imports into the loop, not part of it
        },
    )
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]
    if where != "top":  # only counted when asked for
        assert cycles(import_graph(pkg, ("top",))) == []


def test_walker_counts_the_parent_package_init(tmp_path):
    """``from .sub.b import B`` runs ``sub/__init__``: a loop through a package ``__init__`` is a cycle."""
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .sub.b import B\n",
            "pkg/sub/__init__.py": "from ..a import *\n",
            "pkg/sub/b.py": "B = 2\n",
        },
    )
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub"]]


def test_local_lm_helpers_keep_their_old_import_paths():
    """The helpers moved out of scorers/surprisal.py (an explainer must not import a scorer) are the same
    objects under their old names."""
    from sae_lens_autointerp import local_lm, metrics
    from sae_lens_autointerp.scorers import common, surprisal

    for name in ("LOAD_LOCK", "CausalLM", "load_causal_lm", "continuation_logprobs", "record_usage"):
        assert getattr(surprisal, name) is getattr(local_lm, name)
    assert surprisal._piece_ids is local_lm.piece_ids and surprisal._context_ids is local_lm.context_ids
    assert surprisal.auc_metrics is metrics.auc_metrics and common.flat is metrics.flat


def test_no_explainer_imports_a_scorer():
    graph = import_graph(PACKAGE_DIR)
    wrong = {
        (m, t)
        for m, targets in graph.items()
        if m.startswith("sae_lens_autointerp.explainers")
        for t in targets
        if t.startswith("sae_lens_autointerp.scorers")
    }
    assert wrong == set()


def test_records_imports_no_package_facade():
    """The plain-data module names the modules it needs (``llm.types``, ...), never the ``llm`` package
    facade that holds every backend, nor the package root."""
    modules = package_modules(PACKAGE_DIR)
    path, is_package = modules["sae_lens_autointerp.records"]
    targets = {t for t, _ in module_imports(path, "sae_lens_autointerp.records", is_package, set(modules))}
    assert targets and not targets & {"sae_lens_autointerp.llm", "sae_lens_autointerp"}


_SQL_STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|PRAGMA|BEGIN|COMMIT|ROLLBACK)\b")
_SQL_CALLS = {"execute", "executemany", "executescript", "read_sql", "read_sql_query", "read_sql_table"}


def sql_speakers(package_dir: Path) -> dict[str, set[str]]:
    """``{module: what in it speaks SQL}``: an import of sqlite3, a call of a cursor's or pandas' SQL methods, a
    string (or f-string part) that starts with an SQL statement."""
    out: dict[str, set[str]] = {}
    for name, (path, _) in package_modules(package_dir).items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sqlite3" for a in node.names):
                found.add("import sqlite3")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
                found.add("from sqlite3 import")
            elif isinstance(node, ast.Attribute) and node.attr in _SQL_CALLS:
                found.add(f".{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL_STATEMENT.match(node.value):
                found.add(repr(node.value.strip()[:30]))
        if found:
            out[name] = found
    return out


def test_only_the_results_index_speaks_sql():
    """results.jsonl's index is reached through ``ResultsFile``'s methods: ``report``, the pipeline and the rest
    never issue SQL; ``results/index.py`` is the one module that does."""
    speakers = sql_speakers(PACKAGE_DIR)
    assert set(speakers) == {"sae_lens_autointerp.results.index"}, speakers
    assert {"import sqlite3", ".execute"} <= speakers["sae_lens_autointerp.results.index"]


def test_sql_walker_finds_each_way_of_speaking_sql(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import sqlite3\n",
            "pkg/b.py": "def f(db):\n    return db.execute(q)\n",
            "pkg/c.py": "def f(t):\n    return f'SELECT x FROM {t}'\n",
            "pkg/d.py": "import pandas as pd\ndef f(q, c):\n    return pd.read_sql_query(q, c)\n",
            "pkg/e.py": "TEXT = 'selected works'\n",
        },
    )
    assert set(sql_speakers(pkg)) == {"pkg.a", "pkg.b", "pkg.c", "pkg.d"}


def private_imports(package_dir: Path, prefix: str) -> list[tuple[str, str, str]]:
    """``(module, imported from, name)`` for every ``_``-prefixed name that a module under ``prefix`` imports
    from another module of the package (top level, in functions, under ``TYPE_CHECKING``)."""
    modules = package_modules(package_dir)
    out = []
    for name, (path, is_package) in modules.items():
        if not name.startswith(prefix):
            continue
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if not node.level and base.split(".")[0] != package_dir.name:
                continue  # another distribution's name
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            out += [(name, base, a.name) for a in node.names if a.name.startswith("_") and base != name]
    return out


def test_the_ray_executor_uses_only_public_names_of_the_pipeline(tmp_path):
    """distributed/ runs the pipeline through its public seams (``Runner``, ``Work``, ``LatentWork``): it imports
    no ``_``-prefixed name from another module. The walker sees one where there is one."""
    assert private_imports(PACKAGE_DIR, "sae_lens_autointerp.distributed") == []
    pkg = _write(
        tmp_path,
        {"pkg/__init__.py": "", "pkg/a.py": "_X = 1\n", "pkg/d/__init__.py": "", "pkg/d/b.py": "from ..a import _X\n"},
    )
    assert private_imports(pkg, "pkg.d") == [("pkg.d.b", "pkg.a", "_X")]
