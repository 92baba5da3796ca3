"""The package imports downward only (documentation/architecture.md): every `mass_nn` import, at module level or
inside a function, goes to the importer's own package or to one below it; the module graph has no circle; and
only the command-line modules import inside functions (so that `--help` answers before torch loads)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mass_nn"

# bottom to top; a package may import its own modules and those of the packages before it
LAYERS = [
    {"__init__", "errors", "schema", "paths", "registry", "threads", "memory_reuse", "parallel", "boxes", "io"},
    {"planning"}, {"preprocessing"}, {"masks"}, {"datasets"}, {"networks"}, {"model"}, {"inference"},
    {"evaluation"}, {"training"}, {"export"}, {"experiments"}, {"cli"},
]


def _layer_of(package: str) -> int:
    for rank, members in enumerate(LAYERS):
        if package in members:
            return rank
    raise AssertionError(f"package mass_nn.{package} is in no layer of tests/test_import_layers.py; add it (and "
                         f"to documentation/architecture.md)")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> list[tuple[str, str, bool]]:
    """(importer, imported module, at module level) for every `mass_nn` import of the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        importer = _module_name(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mass_nn":
                found.append((importer, node.module, id(node) in top))
            elif isinstance(node, ast.Import):
                found += [(importer, a.name, id(node) in top) for a in node.names if a.name.split(".")[0] == "mass_nn"]
    return found


def test_the_import_scan_sees_the_package():
    imports = _imports()
    assert len(imports) > 300
    assert ("mass_nn.inference.model_loading", "mass_nn.model.checkpoint", True) in imports


def test_every_import_goes_down_or_sideways_within_a_package():
    upward = [f"{a} -> {b}" for a, b, _ in _imports()
              if _layer_of(_package_of(b)) > _layer_of(_package_of(a))]
    assert upward == []


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of a directed graph as [m1, m2, ..., m1], or None when it has none (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [module, target] if target in path else [module, target]
            if target not in state:
                circle = visit(target, path + [module])
                if circle:
                    return circle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module, [])
            if circle:
                return circle
    return None


def test_no_module_circle():
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in _imports():
        graph.setdefault(importer, set()).add(imported)
    assert find_circle(graph) is None


def test_only_command_line_modules_import_inside_functions():
    hidden = sorted({f"{a} -> {b}" for a, b, top in _imports() if not top and _package_of(a) != "cli"})
    assert hidden == []


def test_the_circle_search_finds_a_planted_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
