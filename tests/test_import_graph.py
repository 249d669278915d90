"""minvar's modules import each other in one direction only: the method first, then io, evaluation and training.

Every import statement counts, including those inside functions: an import deferred into a function body still
makes the two modules depend on each other (and was how the official-weight loaders used to close a circle:
var.py and vqvae.py -> checkpoint.py -> var.py and vqvae.py). A module that imports the package itself
(`import minvar`, `from minvar import x`) depends on everything `minvar/__init__.py` imports, so it is refused too.
"""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minvar"

# The layers, lowest first: a module may import modules of its own layer or of lower ones, never higher.
LAYERS = {"method": 0, "io": 1, "evaluation": 2, "training": 3}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """minvar/io/data.py -> 'minvar.io.data'; minvar/__init__.py -> 'minvar'."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """minvar.var -> the method's layer; minvar.training.ema -> training's."""
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 2 else LAYERS["method"]


def import_graph(package: Path = PACKAGE):
    """{module: set of minvar modules it imports}, read from the source with `ast` (nothing is executed). The package
    itself counts as a module named 'minvar'."""
    paths = {module_name(path, package): path for path in package.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != "minvar":
                    continue
                for alias in node.names:  # `from minvar.io import data` names the module minvar.io.data
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in paths else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "minvar")
        graph[name] = {t for t in targets if t in paths} - {name}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules [a, b, ..., a], or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
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


def layer_violations(graph):
    """(importer, imported) pairs that go the wrong way: into a higher layer, or into the package's __init__ from a
    module of the package (subpackage __init__ files hold only a docstring and count as their layer)."""
    wrong = []
    for module, targets in graph.items():
        if module == "minvar":
            continue
        for target in targets:
            if target == "minvar" or layer_of(target) > layer_of(module):
                wrong.append((module, target))
    return sorted(wrong)


def test_checkers_find_planted_faults(tmp_path):
    """The checkers themselves work: a planted circle is reported and a chain accepted; a method module importing
    training, and a module importing the package itself, are both reported as going the wrong way."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    package = tmp_path / "minvar"
    (package / "training").mkdir(parents=True)
    (package / "__init__.py").write_text("from minvar.var import VAR\n")
    (package / "var.py").write_text("def f():\n    from minvar.training import ema\n")
    (package / "training" / "__init__.py").write_text("")
    (package / "training" / "ema.py").write_text("import minvar\n")
    graph = import_graph(package)
    assert graph["minvar.var"] == {"minvar.training.ema"} and graph["minvar.training.ema"] == {"minvar"}
    assert layer_violations(graph) == [("minvar.training.ema", "minvar"), ("minvar.var", "minvar.training.ema")]


def test_minvar_imports_flow_one_way():
    """No chain of imports (module level or inside functions) leads from a minvar module back to itself; no module
    imports a higher layer or the package itself; the models (var.py, vqvae.py) import nothing that loads files."""
    graph = import_graph()
    assert {"minvar.var", "minvar.io.checkpoint", "minvar.training.run", "minvar.evaluation.flops"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert layer_violations(graph) == []
    assert not any(t.startswith("minvar.io") for t in graph["minvar.var"] | graph["minvar.vqvae"])


def test_every_module_imports_in_a_fresh_interpreter():
    """Every module imports (a fresh interpreter, the lowest layer first, so that no module leans on one imported
    before it by the test run)."""
    names = sorted(import_graph(), key=lambda name: (layer_of(name) if name != "minvar" else 9, name))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_built_wheel_holds_every_module(tmp_path):
    """A plain (non-editable) install gets the subpackages too: the wheel `pip wheel .` builds holds every .py file
    of minvar/ (a `packages = ["minvar"]` list in pyproject.toml would leave io/, evaluation/, training/ out)."""
    import zipfile
    root = PACKAGE.parent
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(root)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("minvar-*.whl")
    in_wheel = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    in_tree = {path.relative_to(root).as_posix() for path in PACKAGE.rglob("*.py")}
    assert in_tree <= in_wheel, f"missing from the wheel: {sorted(in_tree - in_wheel)}"
