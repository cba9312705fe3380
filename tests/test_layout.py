"""The package's layering, read from the source with ``ast``: imports only go down (cli and plugin
on top, then stream, denoise, video, ops), no private name or private module is used across
layers, only ``plugin/_qt`` imports napari or Qt, and matplotlib and distributed stay optional."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "napari_stnls"
# rank of each layer: a module may import its own layer and those of lower rank
LAYERS = {"ops": 0, "video": 1, "denoise": 2, "nn": 2, "stream": 3, "plugin": 4, "cli": 4}
ANYWHERE = {"_util"}  # importable by every layer; it imports nothing of the package itself
ENTRY = {"__init__", "__main__", "flow", "data"}  # the package's own files: entry points and re-exports
QT = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui", "vispy")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import in the file, nested ones too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [a.name for a in node.names]
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            if subs:  # `from . import methods`: the submodules themselves
                out += [(s, [], node.lineno) for s in subs]
                names = [n for n in names if f"{base}.{n}" not in MODULES]
            if names or not subs:
                out.append((base, names, node.lineno))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "napari_stnls" or len(parts) < 2:
        return None
    return parts[1]


def _edges():
    for name, path in MODULES.items():
        for target, names, line in _imports(name, path):
            yield name, path, target, names, line


def test_the_layers_are_the_folders():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)
    files = {p.stem for p in PACKAGE.glob("*.py")}
    assert files == ENTRY | ANYWHERE


def test_imports_only_go_down_and_no_private_name_crosses_layers():
    bad = []
    for name, path, target, names, line in _edges():
        src, dst = _layer(name), _layer(target)
        if dst is None or src in ENTRY or src == dst:
            continue
        where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        if src in ANYWHERE:
            bad.append(f"{where}: napari_stnls/_util.py imports nothing of the package")
            continue
        if dst in ANYWHERE:
            continue
        if dst in ENTRY:
            bad.append(f"{where}: the package's own files are for users, not for its layers")
        elif LAYERS[dst] >= LAYERS[src]:
            bad.append(f"{where}: {src} may import only layers below it")
        private = [p for p in target.split(".")[2:] if p.startswith("_") and not p.startswith("__")]
        private += [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private:
            bad.append(f"{where}: private {private} used from another layer")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, _, target, _, _ in _edges():
        if target in MODULES and target != name and not name.startswith(target + "."):
            graph[name].add(target)
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_qt_folder_imports_napari_or_qt():
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
           for name, path, target, _, line in _edges()
           if target.split(".")[0] in QT and not name.startswith("napari_stnls.plugin._qt")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("extra, allowed", [("matplotlib", "napari_stnls.cli.demo."), ("distributed", None)])
def test_optional_dependencies_stay_in_their_corner(extra, allowed):
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
           for name, path, target, _, line in _edges()
           if target.split(".")[0] == extra and not (allowed and name.startswith(allowed))]
    assert not bad, "\n".join(bad)
