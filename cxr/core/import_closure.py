"""Which `cxr` modules a module uses, read from import statements (function-level ones included), never by
importing anything: importing `cxr.model.networks` to find out would load TensorFlow into every cached run.

Two readers: the cache keys (`cxr.core.caching`: a stage's result is decided by the source of every `cxr`
module its task module reaches) and the pyfunc packaging (`cxr.registry.pyfunc_logging`: what the registered
model ships as `code_paths`).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

PACKAGE = "cxr"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    """The source file of module `name`, or None when the name is an attribute (`cxr.CLASSES`) or not Python.

    `cxr` names are looked up as files (finding a spec would import parent packages); others by their spec.
    """
    if name.split(".")[0] == PACKAGE:
        base = PACKAGE_DIR.joinpath(*name.split(".")[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None
    spec = importlib.util.find_spec(name)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def module_source(name: str) -> str:
    """The text of module `name`'s file (the same text as `inspect.getsource` of the module)."""
    path = module_file(name)
    if path is None:
        raise ModuleNotFoundError(f"no Python source for module {name!r}")
    return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=512)
def _cxr_imports(source: str) -> frozenset[str]:
    """The `cxr` modules (and, for `from cxr.x import y`, candidates `cxr.x.y`) that `source` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(name for name in names if name.split(".")[0] == PACKAGE)


def import_closure(module: str) -> tuple[str, ...]:
    """`module` and every `cxr` module it imports, directly or through others, with the packages that hold
    them (their `__init__` runs on import), sorted. Read afresh on each call, so an edited file counts with
    its edited imports."""
    found = {module}
    pending = [module]
    while pending:
        imported = _cxr_imports(module_source(pending.pop()))
        parents = {name.rsplit(".", depth)[0] for name in imported for depth in range(1, name.count(".") + 1)}
        for name in imported | parents:
            if name not in found and module_file(name) is not None:
                found.add(name)
                pending.append(name)
    return tuple(sorted(found))
