"""Experiments build on the public API alone: every script under experiments/ imports from vsaccade only the names
of `vsaccade.__all__` (README, "Python API"), never edits sys.path and never sets attributes on vsaccade modules or
objects (no monkeypatching: measurement goes through `vsaccade.Instrument`). Each experiment folder has its README.
The checker is itself checked on snippets that break each rule."""

import ast
from pathlib import Path

import pytest

import vsaccade

ROOT = Path(__file__).parent.parent
EXPERIMENTS = ROOT / "experiments"
PUBLIC = set(vsaccade.__all__)


def _root_name(node):
    """The name an attribute/subscript/call chain starts from (`a` of `a.b[0].c()`), or None."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _names_in(node) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _targets(target) -> list:
    """The targets an assignment binds: tuples and lists unpacked."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [t for element in target.elts for t in _targets(element)]
    return _targets(target.value) if isinstance(target, ast.Starred) else [target]


def _bound_names(target) -> list:
    return [t.id for t in _targets(target) if isinstance(t, ast.Name)]


def _imports(tree, siblings: set) -> tuple[list, set, set]:
    """(violations, names bound to the vsaccade module, names bound to anything imported from vsaccade)."""
    problems, modules, imported = [], set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "vsaccade":
                    modules.add(alias.asname or "vsaccade")
                elif alias.name.startswith("vsaccade."):
                    problems.append(f"line {node.lineno}: import {alias.name} (not the public API)")
                    imported.add(alias.asname or "vsaccade")
                elif alias.name.split(".")[0] in siblings:
                    problems.append(f"line {node.lineno}: import {alias.name} (a sibling script: not a package)")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                problems.append(f"line {node.lineno}: relative import (experiments are single files)")
            elif module == "vsaccade":
                for alias in node.names:
                    if alias.name not in PUBLIC:
                        problems.append(f"line {node.lineno}: from vsaccade import {alias.name} "
                                        "(not in vsaccade.__all__)")
                    imported.add(alias.asname or alias.name)
            elif module.startswith("vsaccade."):
                problems.append(f"line {node.lineno}: from {module} import ... (not the public API)")
                imported.update(alias.asname or alias.name for alias in node.names)
            elif module.split(".")[0] in siblings:
                problems.append(f"line {node.lineno}: from {module} import ... (a sibling script: not a package)")
            elif module == "sys" and any(alias.name == "path" for alias in node.names):
                problems.append(f"line {node.lineno}: from sys import path")
    return problems, modules, imported


def _tainted(tree, roots: set) -> set:
    """Names bound (directly or through other bound names) to values made from vsaccade names: its module, what was
    imported from it, and what those return (a model, an image, a task...)."""
    tainted, changed = set(roots), True
    while changed:
        changed = False
        for node in ast.walk(tree):
            pairs = []
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                pairs = [(t, node.value) for t in targets]
            elif isinstance(node, (ast.For, ast.comprehension)):
                pairs = [(node.target, node.iter)]
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                pairs = [(node.optional_vars, node.context_expr)]
            for target, value in pairs:
                if _names_in(value) & tainted:
                    new = set(_bound_names(target)) - tainted
                    tainted |= new
                    changed = changed or bool(new)
    return tainted


def violations(source: str, siblings: set = frozenset()) -> list[str]:
    """What breaks the rules in one experiment's source (empty: nothing)."""
    tree = ast.parse(source)
    problems, modules, imported = _imports(tree, set(siblings))
    tainted = _tainted(tree, modules | imported)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in modules and node.attr not in PUBLIC and not node.attr.startswith("__"):
                problems.append(f"line {node.lineno}: vsaccade.{node.attr} (not in vsaccade.__all__)")
            if node.value.id == "sys" and node.attr == "path":
                problems.append(f"line {node.lineno}: sys.path (experiments do not edit the import path)")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in (t for each in targets for t in _targets(each)):
                if isinstance(target, ast.Attribute) and _root_name(target) in tainted:
                    problems.append(f"line {node.lineno}: sets {ast.unparse(target)} (an attribute of a vsaccade "
                                    "module or object)")
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in ("setattr", "delattr") and node.args and _root_name(node.args[0]) in tainted:
                problems.append(f"line {node.lineno}: {name}({ast.unparse(node.args[0])}, ...) on a vsaccade module "
                                "or object")
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).startswith("vsaccade."):
                problems.append(f"line {node.lineno}: imports {node.args[0].value} (not the public API)")
    return problems


def scripts() -> list[Path]:
    return sorted(EXPERIMENTS.rglob("*.py"))


def test_every_experiment_uses_the_public_api_alone():
    assert scripts(), "no experiment found under experiments/"
    siblings = {path.stem for path in scripts()}
    found = {str(path.relative_to(ROOT)): violations(path.read_text(), siblings) for path in scripts()}
    assert not {path: problems for path, problems in found.items() if problems}


def test_every_experiment_folder_has_a_readme_naming_its_drivers():
    folders = sorted({path.parent for path in EXPERIMENTS.rglob("*") if path.suffix in (".py", ".sh")})
    assert folders
    for folder in folders:
        readme = folder / "README.md"
        assert readme.is_file(), f"{folder.relative_to(ROOT)} has no README.md"
        text = readme.read_text()
        assert "docs/" in text, f"{readme.relative_to(ROOT)} does not point to its docs page"
        for driver in sorted(folder.glob("*.py")) + sorted(folder.glob("*.sh")):
            assert driver.name in text, f"{readme.relative_to(ROOT)} does not mention {driver.name}"


GOOD = """
import sys
import torch
import vsaccade
from vsaccade import Instrument, create_model, sample_glimpses

model = create_model("saccader")
print(sys.argv, vsaccade.predict, vsaccade.__version__)
with Instrument(stages=True) as instrument:
    pass
self_made = {}
self_made["x"] = model
"""

BAD = {
    "submodule import": "import vsaccade.model.readers as readers\n",
    "submodule from-import": "from vsaccade.model.glimpse_sampler import sample_glimpses\n",
    "private name": "from vsaccade import bench\n",
    "attribute outside __all__": "import vsaccade\nvsaccade.bench.count_flops(print)\n",
    "aliased attribute outside __all__": "import vsaccade as v\nv.model.create_model()\n",
    "sys.path insert": "import sys\nsys.path.insert(0, 'tests')\n",
    "sys.path assignment": "import sys\nsys.path = ['x']\n",
    "from sys import path": "from sys import path\npath.append('x')\n",
    "module attribute set": "import vsaccade\nvsaccade.predict = print\n",
    "patched sampler": ("import vsaccade.model.readers as readers\noriginal = readers.sample_glimpses\n"
                        "readers.sample_glimpses = lambda *a: original(*a)\n"),
    "setattr on the module": "import vsaccade\nsetattr(vsaccade, 'predict', print)\n",
    "instance method replaced": ("from vsaccade import ArrayImage\nimage = ArrayImage([[0.0]])\n"
                                 "image.read_region = lambda *a: None\n"),
    "object attribute through a chain": ("from vsaccade import create_model\nmodel = create_model('saccader')\n"
                                         "parts = model.reader\nparts.encoder.forward = print\n"),
    "import_module of a submodule": "import importlib\nimportlib.import_module('vsaccade.bench')\n",
    "sibling import": "import counting_oracle\n",
    "relative import": "from . import helpers\n",
}


def test_the_checker_passes_a_good_script():
    assert violations(GOOD, {"counting_oracle"}) == []


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_checker_catches_each_rule(case):
    assert violations(BAD[case], {"counting_oracle"}), f"{case} was not caught"
