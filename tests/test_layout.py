"""The package layout as a rule: no import cycle, data flows one way, modules stay small.

Every import counts, also those inside functions and under ``if TYPE_CHECKING:``: a lazy import
hides a cycle from Python's import machinery, not from a reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ggufkit"
MAX_LINES = 400

# Lower ranks are lower layers. A unit may import its own modules and units of a strictly lower
# rank, so two units of one rank (formats, llamacpp, data) import nothing of each other.
# Data flows hub -> delta -> convert -> quantize -> evaluate -> workspace; cli/ and demo/ sit on top.
RANKS = {
    "ggufkit": 0,  # only __version__ (its lazy exports are strings, not imports)
    "core": 0,
    "formats": 1,
    "llamacpp": 1,
    "data": 1,
    "hub": 2,
    "delta": 3,
    "convert": 4,
    "quantize": 5,
    "evaluate": 6,
    "inference": 7,  # run and verify: uses evaluate's corpus and labels
    "bnb": 7,  # the bitsandbytes path: uses hub/ and evaluate/; the workspace records its results
    "selftest": 8,  # the build's self-test: convert, quantize, perplexity and the bindings
    "compare": 8,  # GGUF types (evaluate's report) beside bitsandbytes modes (bnb's)
    "workspace": 9,
    "demo": 10,
    "doctor": 10,
    "cli": 11,
    "__main__": 12,
}

# Known exceptions in files another change owns right now (import lines only may change there).
ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The ggufkit modules ``name`` imports, anywhere in its body; ``from pkg import mod`` counts
    as an import of ``pkg.mod``."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                for alias in node.names
            ]
        else:
            continue
        yield from (t for t in targets if t in modules and t != name)


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: set(imports_of(name, path, modules)) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as a path that ends where it starts; None if acyclic."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_cycle_between_modules() -> None:
    edges = {a: {b for b in targets if (a, b) not in ALLOWED} for a, targets in graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = {}
    for a, targets in graph().items():
        for b in targets:
            if unit(a) != unit(b) and (a, b) not in ALLOWED:
                edges.setdefault(unit(a), set()).add(unit(b))
    cycle = find_cycle(edges)
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def test_nothing_imports_upward() -> None:
    units = {unit(m) for m in all_modules()}
    assert units <= set(RANKS), f"give these a rank: {sorted(units - set(RANKS))}"
    upward = sorted(
        f"{a} imports {b}"
        for a, targets in graph().items()
        for b in targets
        if unit(a) != unit(b) and RANKS[unit(b)] >= RANKS[unit(a)] and (a, b) not in ALLOWED
    )
    assert upward == []


def test_graph_sees_function_level_imports() -> None:
    """The walker itself: a lazy import inside a function is an edge like any other."""
    edges = graph()
    assert "ggufkit.llamacpp.build" in edges["ggufkit.quantize.engines"]  # inside binary_engine()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(all_modules()))
def test_module_is_small(name: str) -> None:
    lines = len(all_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it (DEVELOPING.md: ~400)"


def test_every_third_party_import_is_declared() -> None:
    """What ggufkit imports comes from a distribution pyproject.toml names (core or an extra)."""
    import importlib.metadata
    import re
    import sys
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        requirements += extra
    declared = {
        re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }
    # Installed by `ggufkit build`, so not always installed yet when this runs.
    distributions = {
        "llama_cpp": ["llama-cpp-python"],
        **importlib.metadata.packages_distributions(),
    }
    # cmake: an optional probe, guarded by ImportError (find_cmake falls back to it when no
    # cmake is on PATH). conversion, convert_hf_to_gguf: the pinned llama.cpp source's own
    # modules, imported only by the upstream converter's child process with that tree on its path.
    optional = {"cmake", "conversion", "convert_hf_to_gguf"}
    undeclared = set()
    for path in all_modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top == "ggufkit" or top in sys.stdlib_module_names or top in optional:
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not dists & declared:
                    undeclared.add(f"{top} ({path.relative_to(PACKAGE.parent)})")
    assert sorted(undeclared) == []
