"""The library's layers, read from its import statements (no imports are executed).

DiffusionAnomalyLib/
  settings, errors, logs, resources   the shared vocabulary (torch-free)
  imaging/      reading and writing volumes, masks, segmentation files, TotalSegmentator
  detection/    presets, ROI, intensity, anomaly maps, the pipeline, the non-neural baseline (torch-free)
  models/       bundles, networks, diffusion samplers, the reconstructor, devices
  training/     the trainers (nothing that runs a detection imports them)
  evaluation/   datasets, metrics, evaluate, sweep, batch, bench
  synthetic/    phantoms and pseudo-labels from reports
  synthesis/    lesions inserted into a user's scan (synthesize)
  api           the typed Python API (detect; evaluate, sweep, batch, train_all on first use)
  app/          the command line, the worker and its client, dependencies
  slicer_module/ the panel's logic and the Slicer scene code (Slicer's process: torch-free)

Besides who may import whom: no import cycles (module by module, lazy imports included), here and in the
Slicer-like test runtime (``Testing/SlicerRuntime``), and no library module over 600 lines. Run as a script
(``python Testing/Python/test_layout.py``) it prints the number of import cycles and each one as a path.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "DiffusionAnomalyLib"
RUNTIME = REPO / "Testing" / "SlicerRuntime"
PKG = "DiffusionAnomalyLib"
SHARED = {"settings", "options", "errors", "logs", "progress", "resources", "__init__", "__main__"}
LAYERS = {"imaging", "detection", "models", "training", "evaluation", "synthetic", "synthesis", "api", "app",
          "slicer_module"}
# which layers each layer may import (besides itself and the shared modules)
ALLOWED = {
    "imaging": {"detection"},  # masks and TotalSegmentator read the organ presets
    "detection": {"imaging"},
    "models": {"imaging", "detection"},
    "training": {"imaging", "detection", "models", "evaluation", "synthesis"},  # train all --synthetic-unhealthy
    "evaluation": {"imaging", "detection", "models", "synthesis"},  # evaluate --insert
    "synthetic": {"imaging", "detection"},
    "synthesis": {"imaging", "detection", "synthetic", "models"},
    "api": {"imaging", "detection", "models", "training", "evaluation", "synthetic", "synthesis"},
    "app": {"imaging", "detection", "models", "training", "evaluation", "synthetic", "synthesis", "api",
            "slicer_module"},
    # slicer_module: detection for the presets (the baseline's organ)
    "slicer_module": {"imaging", "models", "api", "app", "synthetic", "synthesis", "detection"},
}
SHARED_ALLOWED = {"imaging", "detection", "models"}  # settings resolves presets, sampler and post-processing lazily

# Emptied by issue 36 (the typed API and packaging); keep them empty. The tests below fail on any cycle or upward
# import not listed here, and on a listed one that no longer exists (so the lists cannot rot).
#: Import cycles (each the set of modules that import one another, a strongly connected component).
KNOWN_CYCLES: set[frozenset[str]] = set()
#: Imports against the layers: (importer, imported module).
KNOWN_UPWARD: set[tuple[str, str]] = set()
#: Library modules allowed over MAX_LINES.
MAX_LINES = 600
KNOWN_LONG: set[str] = set()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "shared"


def _imports() -> dict[str, set[str]]:
    """Module (dotted) -> the DiffusionAnomalyLib modules it imports, lazily or not."""
    found: dict[str, set[str]] = {}
    for f in LIB.rglob("*.py"):
        module = ".".join(f.relative_to(LIB.parent).with_suffix("").parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith(PKG):
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level:
                names.add("relative")
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith(PKG))
        found[module] = names
    return found


IMPORTS = _imports()


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module an imported name stands for: itself, its package's ``__init__``, or (a class or function
    imported from a module) the module it comes from."""
    for candidate in (name, f"{name}.__init__", name.rpartition(".")[0], f"{name.rpartition('.')[0]}.__init__"):
        if candidate in modules:
            return candidate
    return None


def module_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """Module -> the modules it imports (module granularity; lazy imports count; a package's ``__init__`` counts
    when it is named, not for every import of one of its modules)."""
    modules = set(imports)
    return {m: {r for n in names if (r := _resolve(n, modules)) is not None and r != m} for m, names in imports.items()}


GRAPH = module_graph(IMPORTS)


def import_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The import cycles: each strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_path(graph: dict[str, set[str]], cycle: frozenset[str]) -> str:
    """One cycle through the component's first module, as ``a -> b -> a`` (shortest, by breadth-first search),
    with every module of the component when the path does not pass them all."""
    start = min(cycle)
    previous: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & cycle):
            if w == start:
                path = [start]
                while v != start:
                    path.append(v)
                    v = previous[v]
                path = [start, *reversed(path[1:]), start]
                text = " -> ".join(path)
                rest = sorted(cycle - set(path))
                return text + (f" (and through {', '.join(rest)})" if rest else "")
            if w not in previous:
                previous[w] = v
                todo.append(w)
    raise AssertionError(f"{sorted(cycle)} is no cycle")


def runtime_graph() -> dict[str, set[str]]:
    """The Slicer-like runtime's modules (``Testing/SlicerRuntime/*.py``) -> the ones of them each imports."""
    modules = {f.stem for f in RUNTIME.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for f in RUNTIME.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.partition(".")[0])
            elif isinstance(node, ast.Import):
                names.update(a.name.partition(".")[0] for a in node.names)
        graph[f.stem] = (names & modules) - {f.stem}
    return graph


def _short(module: str) -> str:
    return module.removeprefix(PKG + ".").removesuffix(".__init__")


def test_every_module_sits_in_a_layer_or_is_shared():
    loose = [m for m in IMPORTS if _layer(m) == "shared" and m.split(".")[-1] not in SHARED and m != PKG + ".__init__"]
    assert loose == []


def test_imports_are_absolute():
    assert [m for m, names in IMPORTS.items() if "relative" in names] == []


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_layers_import_only_what_they_may(module):
    layer = _layer(module)
    if module == f"{PKG}.__main__":  # `python -m DiffusionAnomalyLib` is the command line
        assert IMPORTS[module] <= {f"{PKG}.app.cli", f"{PKG}.app.cli.main"}
        return
    allowed = (ALLOWED[layer] if layer != "shared" else SHARED_ALLOWED) | {layer, "shared"}
    wrong = sorted(n for n in GRAPH[module] if _layer(n) not in allowed and (module, n) not in KNOWN_UPWARD)
    assert wrong == [], f"{module} ({layer}) imports {wrong}"


def test_the_known_upward_imports_still_exist():
    gone = sorted(pair for pair in KNOWN_UPWARD if pair[1] not in GRAPH.get(pair[0], set()))
    assert gone == [], f"no longer imported: remove {gone} from KNOWN_UPWARD"


#: The command dispatcher imports each command's code inside that command (``train`` imports the trainers);
#: the worker reuses only its argument parser, so the walk below does not go through it.
DISPATCHER = f"{PKG}.app.cli"


def _reaches(start: str) -> set[str]:
    """Every library module reachable from start through imports (lazy ones included)."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen or m not in IMPORTS:
            continue
        seen.add(m)
        todo.extend(n for n in IMPORTS[m] if n != DISPATCHER)
    return seen


@pytest.mark.parametrize("entry", ["api", "app.worker", "evaluation.batch", "slicer_module.panel",
                                   "models.reconstruction"])
def test_a_detection_never_imports_training(entry):
    reached = _reaches(f"{PKG}.{entry}")
    assert not [m for m in reached if _layer(m) == "training"]


def test_the_layers_are_documented_here_and_in_developers_md():
    text = (LIB.parent / "DEVELOPERS.md").read_text(encoding="utf-8")
    assert all(f"{layer}/" in text or f"{layer}.py" in text for layer in LAYERS)


def test_no_import_cycles_but_the_known_ones():
    cycles = set(import_cycles(GRAPH))
    new = [cycle_path(GRAPH, c) for c in sorted(cycles - KNOWN_CYCLES, key=min)]
    assert new == [], "import cycles:\n" + "\n".join(new)
    gone = [sorted(map(_short, c)) for c in KNOWN_CYCLES - cycles]
    assert gone == [], f"no longer cycles (as listed): remove or update {gone} in KNOWN_CYCLES"


def test_the_slicer_runtime_has_no_import_cycle():
    graph = runtime_graph()
    assert {"qt", "ctk", "qmrml", "slicer_runtime"} <= set(graph)
    assert [cycle_path(graph, c) for c in import_cycles(graph)] == []


def test_the_cycle_finder_finds_lazy_cycles_and_names_the_path():
    imports = {"P.a": {"P.b.f"}, "P.b": {"P.c"}, "P.c": {"P.a", "P.d"}, "P.d": set(), "P.e": {"P.e"}}
    graph = module_graph(imports)
    assert import_cycles(graph) == [frozenset({"P.a", "P.b", "P.c"})]
    assert cycle_path(graph, frozenset({"P.a", "P.b", "P.c"})) == "P.a -> P.b -> P.c -> P.a"


def test_no_library_module_is_over_600_lines():
    lengths = {m: len((REPO / (m.replace(".", "/") + ".py")).read_text(encoding="utf-8").splitlines())
               for m in IMPORTS}
    long = sorted(f"{m} ({n} lines)" for m, n in lengths.items() if n > MAX_LINES and m not in KNOWN_LONG)
    assert long == [], f"split by role: {long}"
    gone = sorted(m for m in KNOWN_LONG if lengths.get(m, 0) <= MAX_LINES)
    assert gone == [], f"at most {MAX_LINES} lines now: remove {gone} from KNOWN_LONG"


def count_cycles() -> list[str]:
    """The report the script prints: the number of import cycles, then each as a path."""
    runtime = runtime_graph()
    lib = [cycle_path(GRAPH, c) for c in sorted(import_cycles(GRAPH), key=min)]
    rt = [cycle_path(runtime, c) for c in sorted(import_cycles(runtime), key=min)]
    return [f"{len(lib) + len(rt)} import cycles ({len(lib)} in {PKG}, {len(rt)} in Testing/SlicerRuntime)",
            *(f"  {p}" for p in lib + rt)]


def test_the_script_prints_the_number_of_import_cycles():
    """``python Testing/Python/test_layout.py``: issue 36 is done when it prints ``0 import cycles``."""
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True).stdout.splitlines()
    print("\n".join(out))
    assert out[0].startswith(f"{len(KNOWN_CYCLES)} import cycles ({len(KNOWN_CYCLES)} in {PKG}, 0 in ")
    assert len(out) == 1 + len(KNOWN_CYCLES) and all(" -> " in line for line in out[1:])


if __name__ == "__main__":
    print("\n".join(count_cycles()))
