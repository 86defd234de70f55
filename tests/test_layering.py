"""The package's dependency rules (design.md section 2), read from the source of every module.

Every ``import`` in ``tf_xmr`` (module level and inside functions alike: a deferred import is still a dependency) is
mapped to the layer it reaches, and an arrow the design forbids fails the test, naming the module, the line and the
rule. A second test finds import cycles between modules.

Layers, bottom up (a module may import its own layer and the layers listed for it):

- ``errors``, ``files``: the foundation, importing nothing of tf_xmr;
- ``config``, ``layers``, ``losses``, ``metrics``, ``data``: leaves (only the foundation; ``data`` reads config
  sections but never imports a method, a model or training);
- ``methods``: models, built from layers, losses and config; never reads files (no ``tf_xmr.data`` readers, no
  ``open``), so a model sees its data only through the ``DataSpec``;
- ``experiment``, ``modeling``, ``scoring``, ``run_dir``: configs typed by method, models built from data, scores of
  encoders on splits, the run directory's files;
- ``export``, ``evaluation``: take trained models and scoring from below training, never ``tf_xmr.training``;
- ``featurize``: raw images and texts to feature records (writes what ``data`` reads); ``export`` and ``retrieval``
  take its fitted featurizers for raw-input signatures and queries;
- ``retrieval``: galleries and retrievers built on the exports and a run's encoders, never ``tf_xmr.training``;
- ``training``: the run pipeline and the fit stages;
- entry points: ``cli``, ``reporting``, ``commands`` (train / evaluate / tune), and every ``__main__`` module.
"""

from __future__ import annotations

import ast
import os

from tests.conftest import ROOT

PACKAGE = os.path.join(ROOT, "tf_xmr")

FOUNDATION = {"errors", "files"}
LEAVES = {"config", "layers", "losses", "metrics", "data"}
ALLOWED = {
    "errors": set(),
    "files": set(),
    "config": FOUNDATION,
    "layers": FOUNDATION,
    "losses": FOUNDATION,
    "metrics": FOUNDATION,
    "data": FOUNDATION | {"config"},
    # feature_set / grouping are pure array helpers (multi-hot labels, DA-GAN's semantic groups), no file access.
    "methods": FOUNDATION | {"config", "layers", "losses", "data.feature_set", "data.grouping"},
    "experiment": FOUNDATION | {"config", "methods"},
    "run_dir": FOUNDATION | {"config", "experiment"},
    "modeling": FOUNDATION | {"config", "data", "methods", "run_dir"},
    "scoring": FOUNDATION | {"config", "data", "metrics"},
    "export": FOUNDATION | {"config", "data", "modeling", "run_dir", "scoring", "methods", "featurize"},
    "evaluation": FOUNDATION | {"config", "data", "metrics", "modeling", "run_dir", "scoring", "export", "methods"},
    # featurize writes what data reads; it never imports a method, a model or training.
    "featurize": FOUNDATION | {"config", "data"},
    "retrieval": FOUNDATION | {"config", "data", "metrics", "modeling", "run_dir", "scoring", "export", "methods",
                               "featurize"},
    "training": FOUNDATION | LEAVES | {"methods", "experiment", "modeling", "scoring", "run_dir", "export"},
}
ENTRY_POINTS = {"cli", "reporting", "__init__"}


def _modules():
    for folder, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                yield rel, path


def _imports(path: str):
    """(line, imported tf_xmr module path without the package prefix) for every import of tf_xmr in the file."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tf_xmr."):
                    yield node.lineno, alias.name[len("tf_xmr."):]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tf_xmr":
                for alias in node.names:
                    yield node.lineno, alias.name
            elif node.module.startswith("tf_xmr."):
                yield node.lineno, node.module[len("tf_xmr."):]


def _layer(module: str) -> str:
    return module.split(".")[0]


def _is_entry_point(module: str) -> bool:
    return module in ENTRY_POINTS or module.endswith("__main__") or _layer(module) == "commands"


def _allowed(source: str, target: str) -> bool:
    src, dst = _layer(source), _layer(target)
    if src == dst:
        return True
    allowed = ALLOWED[src]
    return dst in allowed or target in allowed or any(target.startswith(a + ".") for a in allowed if "." in a)


def test_every_module_has_a_layer():
    unknown = sorted({_layer(m) for m, _ in _modules() if not _is_entry_point(m)} - set(ALLOWED))
    assert not unknown, f"tf_xmr modules with no layer in this test's table (add them to ALLOWED): {unknown}"


def test_no_forbidden_import():
    broken = []
    for module, path in _modules():
        if _is_entry_point(module):
            continue
        for line, target in _imports(path):
            if not _allowed(module, target):
                broken.append(f"tf_xmr/{module.replace('.', '/')}.py:{line} imports tf_xmr.{target} "
                              f"({_layer(module)} may import only {sorted(ALLOWED[_layer(module)])})")
    assert not broken, "\n".join(broken)


def test_methods_never_open_files():
    """A model sees its data only through the DataSpec: no open() or numpy/h5py/gensim loaders in methods."""
    readers = {"open", "load", "loadtxt", "genfromtxt", "File", "load_keyed_vectors", "read_file"}
    found = []
    for module, path in _modules():
        if _layer(module) != "methods":
            continue
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                if name in readers:
                    found.append(f"tf_xmr/{module.replace('.', '/')}.py:{node.lineno} calls {name}()")
    assert not found, "\n".join(found)


def _resolve(target: str, modules: set[str]) -> str | None:
    """The module an import reaches: ``a.b`` itself, or the package ``a.b.__init__``; ``a.b.C`` (a name) -> ``a.b``."""
    while target:
        if target in modules:
            return target
        if f"{target}.__init__" in modules:
            return f"{target}.__init__"
        target = target.rpartition(".")[0]
    return None


def test_no_import_cycle():
    """Module-level and deferred imports together: no module reaches itself."""
    modules = dict(_modules())
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for _, target in _imports(path):
            reached = _resolve(target, set(modules))
            # A package's __init__ re-exporting its own submodules is not a cycle of logic.
            if reached and reached != module and not (module.endswith("__init__")
                                                      and reached.startswith(module[: -len("__init__")])):
                graph[module].add(reached)
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
