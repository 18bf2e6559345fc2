"""Module layout: every module imports on its own, and the import graph of augcl/ and trainer/ has no cycle.

A cycle between two modules works or fails by which one is imported first, and is usually papered over with an
import inside a function; the graph test reads every import statement (top level or not) with ``ast``, so such a
workaround counts as an edge too.
"""
import ast
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

PACKAGES = ("augcl", "trainer")


def module_names(package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of ``package`` (sub-packages included)."""
    names = {}
    for f in sorted((REPO / package).rglob("*.py")):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = f
    return names


def import_graph(packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports, from every ``import`` statement in its source, wherever it is.

    ``from P import x`` depends on module ``P.x`` when that is a module, else on ``P``. A module's implicit import
    of its parent packages is no edge (Python imports them first, whatever the module says)."""
    modules = {name: f for p in packages for name, f in module_names(p).items()}
    graph = {}
    for name, f in modules.items():
        package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    deps.add(f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan): each holds at least one cycle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_lazy_imports_and_cycles():
    graph = import_graph()
    assert "trainer.pack" in graph["trainer.data"] and "augcl.banks" in graph["augcl.pair"]
    assert "trainer.builtin" in graph["trainer.common"]  # resolve_store imports it inside the function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_trainer_imports_are_acyclic():
    graph = import_graph()
    assert [c for c in cycles(graph) if any(m.startswith("trainer") for m in c)] == []
    # the built-in dataset and the packer share the renderer; neither imports the other's side
    assert "trainer.render" in graph["trainer.pack"] and "trainer.render" in graph["trainer.builtin"]
    assert "trainer.builtin" not in graph["trainer.pack"]
    assert not graph["trainer.render"] & set(module_names("trainer"))


def test_augcl_imports_are_acyclic():
    graph = import_graph()
    assert not {d for m, deps in graph.items() if m.startswith("augcl") for d in deps if d.startswith("trainer")}
    found = [c for c in cycles(graph) if any(m.startswith("augcl") for m in c)]
    assert found == [], f"import cycles in augcl/: {found}"


def test_each_trainer_module_imports_first():
    """Each module imported before any other of trainer/ (they are dropped from ``sys.modules`` in between), in one
    fresh interpreter: an import cycle would fail for the module that enters it from the wrong side."""
    script = ("import importlib, sys\n"
              "for m in sys.argv[1:]:\n"
              "    for k in [k for k in sys.modules if k == 'trainer' or k.startswith('trainer.')]:\n"
              "        del sys.modules[k]\n"
              "    importlib.import_module(m)\n")
    modules = sorted(module_names("trainer"))
    run = subprocess.run([sys.executable, "-c", script, *modules], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
