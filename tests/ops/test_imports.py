"""The import graph of napari_stnls.ops, read from the source with ast: no circle, and nothing
imported from the rest of the package but the compiled module."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_stnls.ops

OPS_DIR = Path(napari_stnls.ops.__file__).parent
PKG = "napari_stnls"


def _modules() -> dict[str, Path]:
    """{dotted name: file} of every module of napari_stnls.ops (packages by their __init__)."""
    out = {}
    for path in OPS_DIR.rglob("*.py"):
        parts = path.relative_to(OPS_DIR.parent.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The napari_stnls modules ``name`` imports (submodules where ``from X import y`` names one)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            subs = {f"{target}.{a.name}" for a in node.names}
            named = {s for s in subs if s in modules or s == f"{PKG}._C"}
            found |= named
            if not named or len(named) < len(subs):
                found.add(target)
            # the subpackages on the way (their __init__ runs), except the importer's own parents
            parts = target.split(".")
            for i in range(len(parts) - 1, 1, -1):
                pkg = ".".join(parts[:i])
                if not name.startswith(pkg + ".") and pkg != name:
                    found.add(pkg)
    return {m for m in found if m == PKG or m.startswith(PKG + ".")}


def _circle(graph: dict[str, list[str]]) -> list[str] | None:
    """A circle of ``graph`` ({node: successors}) as a path, or None (depth-first search: a node
    met again while still on the path closes a circle)."""
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = "open"
        for d in graph[m]:
            if state.get(d) == "open":
                return path + [m, d]
            if d not in state and (found := visit(d, path + [m])):
                return found
        state[m] = "done"
        return None

    for m in graph:
        if m not in state and (found := visit(m, [])):
            return found
    return None


def test_the_ops_import_graph_has_no_circle_and_stays_inside_ops():
    modules = _modules()
    assert f"{PKG}.ops.search" in modules and f"{PKG}.ops._reference.search" in modules
    graph = {}
    for name, path in modules.items():
        deps = _imports(name, path, modules)
        outside = {d for d in deps if not (d == f"{PKG}.ops" or d.startswith(f"{PKG}.ops."))}
        assert outside <= {f"{PKG}._C"}, f"{name} imports {sorted(outside)} from outside napari_stnls.ops"
        graph[name] = sorted(d for d in deps - outside if d != name)
        for d in graph[name]:
            assert d in modules, f"{name} imports {d}, which is not a module of napari_stnls.ops"
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_checks_see_imports_and_circles():
    """The parser finds relative imports of modules and of names in modules; the search finds a
    circle where there is one."""
    modules = _modules()
    search = _imports(f"{PKG}.ops.search", modules[f"{PKG}.ops.search"], modules)
    assert {f"{PKG}.ops._library", f"{PKG}.ops._window", f"{PKG}.ops._reference.search",
            f"{PKG}.ops._determinism"} <= search
    assert _imports(f"{PKG}.ops._library", modules[f"{PKG}.ops._library"], modules) == {f"{PKG}._C"}
    assert _circle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert _circle({"a": ["b", "c"], "b": ["c"], "c": []}) is None
