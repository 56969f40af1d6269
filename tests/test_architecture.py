"""The layers of gpt2/ (docs/architecture.md): a module imports only from its own layer or below, and no package
imports itself back through another, directly or around a longer loop. Imports inside functions and under
``TYPE_CHECKING`` count too; only a module's ``if __name__ == "__main__":`` block (it runs as the program, on top
of everything) may reach up."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

# Bottom to top. A name is a top-level module or package of gpt2/ ("__init__" is gpt2/__init__.py).
LAYERS: tuple[tuple[str, str], ...] = (
    ("base", "__init__ errors io dtypes device distributed flags interrupt reports"),
    ("text and model", "data tokenizer model attention"),
    ("checkpoints and inference", "checkpoint inference"),
    ("stages", "training evaluation generation deployment study"),
    ("entry points", "commands cli __main__"),
)
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names.split()}
# Where argparse may be imported: the commands and the flags bridge. The rest of gpt2/ takes configs.
ARGPARSE_ALLOWED = ("gpt2.commands", "gpt2.cli", "gpt2.flags")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, gpt2.x.y
    target: str  # the imported module, gpt2.a.b
    where: str  # path:line

    @property
    def source_unit(self) -> str:
        return unit(self.source)

    @property
    def target_unit(self) -> str:
        return unit(self.target)


def layer_name(unit: str) -> str | None:
    return LAYERS[LAYER_OF[unit]][0] if unit in LAYER_OF else None


def unit(module: str) -> str:
    """The top-level module or package of gpt2 that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_names(root: Path) -> dict[str, Path]:
    """``{gpt2.x.y: path}`` for every module under ``root/gpt2`` (a package as its own name)."""
    names = {}
    for path in sorted((root / "gpt2").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
    )


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _import_nodes(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those of a top-level ``__main__`` block."""
    found: list[ast.Import | ast.ImportFrom] = []
    for statement in tree.body:
        if not _is_main_guard(statement):
            found += [n for n in ast.walk(statement) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def gpt2_imports(root: Path) -> list[Import]:
    modules = module_names(root)
    imports = []
    for source, path in modules.items():
        is_package = path.name == "__init__.py"
        where = path.relative_to(root)
        for node in _import_nodes(_parse(path)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: from the module's package, one level up per extra dot
                    package = source.split(".")[: len(source.split(".")) - node.level + is_package]
                    base = ".".join(package + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from gpt2.x import y` imports the module gpt2.x.y when there is one, else a name of gpt2.x.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target == "gpt2" or target.startswith("gpt2."):
                    imports.append(Import(source, target, f"{where}:{node.lineno}"))
    return imports


def argparse_users(root: Path) -> set[str]:
    """The modules outside :data:`ARGPARSE_ALLOWED` that import argparse (a ``__main__`` block aside)."""
    users = set()
    for name, path in module_names(root).items():
        nodes = _import_nodes(_parse(path))
        names = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in nodes if isinstance(n, ast.ImportFrom) and n.module}
        allowed = any(name == a or name.startswith(a + ".") for a in ARGPARSE_ALLOWED)
        if "argparse" in names and not allowed:
            users.add(name)
    return users


def unplaced_modules(root: Path) -> list[str]:
    return sorted(
        f"{path.relative_to(root)}: gpt2.{unit(name)} is in no layer (add it to LAYERS here and to "
        "docs/architecture.md)"
        for name, path in module_names(root).items()
        if unit(name) not in LAYER_OF
    )


def upward_imports(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        src, dst = LAYER_OF.get(imp.source_unit), LAYER_OF.get(imp.target_unit)
        if src is None or dst is None or dst <= src:
            continue
        problems.append(
            f"{imp.where}: {imp.source} ({LAYERS[src][0]}) imports {imp.target} from a higher layer ({LAYERS[dst][0]})"
        )
    return problems


def import_cycles(imports: list[Import], packages: bool = True) -> list[str]:
    """One line per loop of packages (or of modules) that import each other, with the import that makes each
    step. Modules: an import of ``gpt2.x.y`` counts as one of ``gpt2.x.y`` only, not of its package's
    ``__init__``."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        a, b = (imp.source_unit, imp.target_unit) if packages else (imp.source, imp.target)
        if a != b:
            edges.setdefault(a, {}).setdefault(b, imp)
    cycles, seen = [], set()
    for start in sorted(edges):
        path = _path_back(edges, start)
        if path is not None and frozenset(path) not in seen:
            seen.add(frozenset(path))
            steps = [edges[a][b] for a, b in zip(path, path[1:] + path[:1], strict=True)]
            hops = [f"{node} ({step.where} imports {step.target})" for node, step in zip(path, steps, strict=True)]
            cycles.append(" -> ".join([*hops, path[0]]))
    return cycles


def _path_back(edges: dict[str, dict[str, Import]], start: str) -> list[str] | None:
    """The shortest loop from ``start`` back to it (breadth first), or None."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target in sorted(edges.get(node, {})):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if target not in parents:
                    parents[target] = node
                    nxt.append(target)
        frontier = nxt
    return None


# --- gpt2/ itself ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return gpt2_imports(ROOT)


def test_every_module_is_in_a_layer():
    assert unplaced_modules(ROOT) == []


def test_no_module_imports_from_a_higher_layer(imports):
    assert upward_imports(imports) == []


def test_only_the_commands_parse_arguments():
    assert sorted(argparse_users(ROOT)) == [], "argparse outside gpt2/commands: move add_arguments/run there"


def test_no_packages_import_each_other(imports):
    assert import_cycles(imports) == []


def test_no_modules_import_each_other(imports):
    assert import_cycles(imports, packages=False) == []


def test_the_architecture_doc_places_every_module_as_layers_does():
    text = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*([^|]+?)\s*\|\s*`gpt2/([\w]+)(?:/|\.py)`\s*\|", text, re.M)
    documented = {name: layer for layer, name in rows}
    placed = {unit(name) for name in module_names(ROOT)} - {"__init__"}
    assert sorted(placed - documented.keys()) == [], "modules of gpt2/ missing from docs/architecture.md's table"
    misplaced = {name: layer for name, layer in documented.items() if layer != layer_name(name)}
    assert misplaced == {}, "layers in docs/architecture.md that differ from LAYERS"


# --- the checks themselves, on a planted tree -----------------------------------------------------------------


def plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in {"gpt2/__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_catch_an_upward_import_inside_a_function(tmp_path):
    root = plant(
        tmp_path,
        {
            "gpt2/errors.py": "class UserError(ValueError):\n    pass\n",
            "gpt2/io.py": "def f():\n    from gpt2.training import trainer\n",  # base -> stages
            "gpt2/training/__init__.py": "",
            "gpt2/training/trainer.py": "from gpt2 import errors\n",
            "gpt2/model/__init__.py": "from .gpt import GPT\n",
            "gpt2/model/gpt.py": "from ..attention import get\nif __name__ == '__main__':\n    import gpt2.cli\n",
            "gpt2/attention.py": "",
            "gpt2/extra.py": "import argparse\n",
        },
    )
    imports = gpt2_imports(root)
    assert upward_imports(imports) == [
        "gpt2/io.py:2: gpt2.io (base) imports gpt2.training.trainer from a higher layer (stages)"
    ]
    found = {(i.source, i.target) for i in imports}
    assert {("gpt2.training.trainer", "gpt2.errors"), ("gpt2.model", "gpt2.model.gpt")} <= found
    assert ("gpt2.model.gpt", "gpt2.attention") in found  # two dots: from the package above
    assert ("gpt2.model.gpt", "gpt2.cli") not in found  # the __main__ block runs as the program
    assert unplaced_modules(root) == [
        "gpt2/extra.py: gpt2.extra is in no layer (add it to LAYERS here and to docs/architecture.md)"
    ]
    assert argparse_users(root) == {"gpt2.extra"}


def test_the_checks_catch_packages_and_modules_that_import_each_other(tmp_path):
    root = plant(
        tmp_path,
        {
            "gpt2/tokenizer.py": "from gpt2.data.text_shards import iter_documents\n",
            "gpt2/data/__init__.py": "",
            "gpt2/data/text_shards.py": "",
            "gpt2/data/tokens.py": "import typing\n\nif typing.TYPE_CHECKING:\n    from gpt2 import tokenizer\n",
            "gpt2/model/__init__.py": "",
            "gpt2/model/a.py": "def f():\n    from gpt2.model import b\n",
            "gpt2/model/b.py": "from gpt2.model.a import f\n",
        },
    )
    imports = gpt2_imports(root)
    assert import_cycles(imports) == [
        "data (gpt2/data/tokens.py:4 imports gpt2.tokenizer) -> tokenizer (gpt2/tokenizer.py:1 imports "
        "gpt2.data.text_shards) -> data"
    ]
    assert import_cycles(imports, packages=False) == [
        "gpt2.model.a (gpt2/model/a.py:2 imports gpt2.model.b) -> gpt2.model.b (gpt2/model/b.py:1 imports "
        "gpt2.model.a) -> gpt2.model.a"
    ]
