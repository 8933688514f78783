"""The layout holds: files a reader can hold in mind, one-way imports, no private names across
modules, no backend named outside the registry, and a backend added by its module and one entry.

Read from the source with ``ast``; nothing is imported but the registry.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepdown
from stepdown.backends import registry
from stepdown.backends.registry import BackendInfo
from stepdown.cli.doctor import doctor
from stepdown.errors import UsageError

from tests.support.tasks import square
from tests.support.toy import INFO

SRC = Path(stepdown.__file__).parent
# A catalogue, not logic: the demo's few hundred candidate programs.
LONG_ALLOWED = {"demo/programs.py"}
MAX_LINES = 400


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> Iterator[tuple[str, list[str], int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, [], child.lineno
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                yield base, [alias.name for alias in child.names], child.lineno
            yield from visit(child)

    yield from visit(tree)


def graph() -> dict[str, set[str]]:
    known = dict(modules())
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for module, names, _ in imports(name, path):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in known and target != name:
                    edges[name].add(target)
    return edges


def test_every_module_is_short_and_says_what_it_owns() -> None:
    long = []
    undocumented = []
    for name, path in modules():
        relative = path.relative_to(SRC).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and relative not in LONG_ALLOWED:
            long.append(f"{relative} ({lines})")
        if ast.get_docstring(ast.parse(path.read_text())) is None:
            undocumented.append(name)
    assert long == [], f"modules over {MAX_LINES} lines"
    assert undocumented == [], "modules without an opening docstring"


def test_no_private_name_is_imported_across_modules() -> None:
    found = []
    for name, path in modules():
        for module, names, line in imports(name, path):
            if not module.startswith("stepdown"):
                continue
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private or any(part.startswith("_") for part in module.split(".")[1:]):
                if module.rpartition(".")[0] == name.rpartition(".")[0] and not private:
                    continue  # a package's own private module (backends/_pool.py)
                found.append(f"{name}:{line} imports {module} {private}")
    assert found == []


def test_imports_have_no_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])
    assert cycles == []


# Which parts may import which: the data path goes one way.
_FACE = ("stepdown.api", "stepdown.executor", "stepdown.cli", "stepdown.integrations")
FORBIDDEN = {
    "stepdown.backends": ("stepdown.runner", *_FACE),
    "stepdown.planning": ("stepdown.runner", *_FACE),
    "stepdown.budget": ("stepdown.runner", *_FACE),
    "stepdown.runner": _FACE,
}


def test_the_data_path_goes_one_way() -> None:
    found = []
    for name, targets in graph().items():
        for part, forbidden in FORBIDDEN.items():
            if name.startswith(part):
                found += [f"{name} -> {t}" for t in targets if t.startswith(forbidden)]
    assert found == []


def test_no_backend_is_named_outside_the_registry() -> None:
    compared = re.compile(r"""[=!]=\s*["'](sequential|thread|process|loky|ray)["']""")
    found = []
    for name, path in modules():
        if name == "stepdown.backends.registry":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if compared.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []


def test_a_registered_backend_is_a_rung_like_any_other() -> None:
    # conftest registered the toy backend: the contract suite runs on it (test_contract.py).
    assert registry.info("toy") is INFO
    run = stepdown.run(square, range(20), ladder=["toy:2"])
    assert run.results == [x * x for x in range(20)]
    assert run.report.final_rung == "toy(2)"
    chosen = stepdown.plan(tasks=8, ladder=["toy:1", "thread:2"])
    assert [p.label for p in chosen.rungs] == ["toy(1)", "thread(2)", "sequential"]
    assert "toy" in [b.name for b in doctor().backends]
    with pytest.raises(UsageError, match=r"unknown option 'colour' for backend 'toy'"):
        stepdown.plan(ladder=[{"backend": "toy", "colour": "blue"}])


def test_a_second_last_rung_is_refused() -> None:
    with pytest.raises(UsageError, match="only one backend can be the last rung"):
        registry.register(BackendInfo("another", "nowhere", in_process=True, last=True))
    assert "another" not in registry.backend_names()
