"""The import graph of the web app and the worker, read from the source (every import statement,
those inside functions too): no module imports itself back through others, the bottom layers import
nothing above them, and the one two-way tie between apps stays as narrow as it is."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# feedback -> runs, the one tie between apps that goes both ways (runs reads the labels): the policy
# writes the answers people judge (generation, the serving version), and a label can queue a run.
FEEDBACK_TO_RUNS = {
    ("webapp.feedback.chat", "webapp.runs.models"),  # an admin pins the version that answers a chat
    ("webapp.feedback.figures", "webapp.runs.selectors"),  # a figure's data state names the serving version
    ("webapp.feedback.generation", "webapp.runs.models"),
    ("webapp.feedback.generation", "webapp.runs.policy"),
    ("webapp.feedback.generation", "webapp.runs.selectors"),
    ("webapp.feedback.selectors", "webapp.runs.models"),
    ("webapp.feedback.services", "webapp.runs.models"),
    ("webapp.feedback.services", "webapp.runs.selectors"),
    ("webapp.feedback.services", "webapp.runs.services"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in [*ROOT.glob("webapp/**/*.py"), *ROOT.glob("worker/*.py")]:
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _app(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "worker":
        return "worker"
    if parts[1:3] == ["core", "management"]:
        return "commands"  # entry points: they may use every app
    return parts[1] if len(parts) > 2 else parts[-1]


def test_no_module_imports_itself_back():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_accounts_and_core_import_no_app_above_them_and_the_web_never_imports_the_worker():
    above = {"feedback", "runs", "api", "dashboard", "chat", "worker", "commands"}
    for module, targets in _graph().items():
        if _app(module) in ("accounts", "core"):
            wrong = sorted(t for t in targets if _app(t) in above)
            assert not wrong, f"{module} imports {wrong}"
        if _app(module) != "worker":
            assert "worker.tasks" not in targets, f"{module} imports the worker's tasks"


def test_feedback_reaches_into_runs_only_where_it_must():
    edges = _graph()
    ties = {(a, b) for a, bs in edges.items() for b in bs if _app(a) == "feedback" and _app(b) == "runs"}
    ties = {(a, b) for a, b in ties if b != "webapp.runs"}  # `from webapp.runs import x` names x too
    assert ties == FEEDBACK_TO_RUNS
