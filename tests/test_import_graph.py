"""minvar's modules import each other in one direction only: the import graph of minvar/*.py has no cycle.

Every import statement counts, including those inside functions: an import deferred into a function body still
makes the two modules depend on each other (and was how the official-weight loaders used to close a circle:
var.py and vqvae.py -> checkpoint.py -> var.py and vqvae.py).
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minvar"


def import_graph():
    """{module: set of minvar modules it imports}, read from the source with `ast` (nothing is executed)."""
    modules = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    graph = {}
    for name in modules:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(), filename=f"{name}.py")
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "minvar" and len(parts) > 1:  # from minvar.x import ...
                    targets.add(parts[1])
                elif node.module == "minvar":  # from minvar import x (x a module, or a name from __init__)
                    targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.Import):
                targets.update(a.name.split(".")[1] for a in node.names if a.name.startswith("minvar."))
        graph[name] = targets & modules - {name}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules [a, b, ..., a], or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    """The checker itself works: it reports a planted circle and accepts a chain."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_minvar_import_graph_has_no_cycle():
    """No chain of imports (module level or inside functions) leads from a minvar module back to itself; the
    models (var.py, vqvae.py) import nothing that loads weight files."""
    graph = import_graph()
    assert {"official", "checkpoint", "var", "vqvae"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert not graph["var"] & {"official", "checkpoint"} and not graph["vqvae"] & {"official", "checkpoint"}
