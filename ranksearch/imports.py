"""User code named by a string: ``"package.module:function"`` or ``"path/to/file.py:function"``.

Model factories, data factories, training loops and metrics reach the search's worker
processes (other processes, other hosts under Ray) as such strings, stored in the study's
config: each worker imports them by path, as it imports ranksearch itself. A function defined
in the script that starts a search (``__main__``) is named by the script's file, which workers
import under another module name, so the script's ``if __name__ == "__main__":`` block does not
run again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["ImportFailed", "resolve", "spec_of", "split_spec"]


class ImportFailed(UserError):
    """User code that cannot be imported by its name; the message is one line."""


def _module_from_file(path: Path) -> Any:
    # The module this process already imported from that file, if any (the launching script's
    # own `import toy_task`): running its top level again would make a second copy.
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).name == path.name and Path(file).resolve() == path:
            return module
    # Else one module per file, named by the file's resolved path, so that two scripts with
    # the same stem do not shadow each other and a second resolve() reuses the first import.
    name = "_ranksearch_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    # As when the file runs as a script: its folder comes first on the path while its top
    # level imports, so that `import helpers` finds the helpers.py beside it.
    sys.path.insert(0, str(path.parent))
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module


def split_spec(spec: str) -> tuple[str | Path, str]:
    """What ``spec`` names: the module's name or the ``.py`` file's resolved path, and the
    function's (dotted) name in it; ``("", "")`` for a string of neither form."""
    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        return "", ""
    return (Path(target).resolve() if target.endswith(".py") else target), attribute


def resolve(spec: str, what: str) -> Callable[..., Any]:
    """The callable that ``spec`` names; ``what`` names its role in errors ("model factory").

    Raises:
        ImportFailed: a malformed spec, a module or file that fails to import, or a name that
            is missing or not callable.
    """
    target, attribute = split_spec(spec)
    if not attribute:
        raise ImportFailed(
            f"{what} {spec!r} must read 'package.module:function' or 'path/to/file.py:function'"
        )
    try:
        if isinstance(target, Path):
            if not target.is_file():
                raise ImportFailed(f"{what} {spec!r}: no such file {target}")
            module = _module_from_file(target)
        else:
            module = importlib.import_module(target)
    except ImportFailed:
        raise
    except Exception as error:  # noqa: BLE001 - user code may raise anything while importing
        raise ImportFailed(
            f"{what} {spec!r}: cannot import {str(target)!r}: {type(error).__name__}: {error}"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
    if not callable(found):
        raise ImportFailed(f"{what} {spec!r}: {str(target)!r} has no function {attribute!r}")
    return found


def spec_of(function: Callable[..., Any], what: str) -> str:
    """The string naming ``function`` for :func:`resolve`, checked to name it back.

    Raises:
        ImportFailed: a lambda, a nested function or any callable that workers in other
            processes could not import by name.
    """
    if isinstance(function, str):
        resolve(function, what)
        return function
    if not (inspect.isroutine(function) or inspect.isclass(function)):
        raise ImportFailed(
            f"{what}: expected a function (or class) defined at the top level of a module or "
            f"script, got a {type(function).__name__} object (pass make_model, not "
            "make_model())")
    module_name = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not module_name or not qualname or "<" in qualname:
        raise ImportFailed(
            f"{what} {qualname or function!r} cannot be imported by worker processes: pass a "
            "function defined at the top level of a module or script (not a lambda or a nested "
            "function)"
        )
    if module_name == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if main_file is None:
            raise ImportFailed(
                f"{what} {qualname!r} is defined in an interactive session, which worker "
                "processes cannot import: put it in a .py file and import it from there"
            )
        # Not imported here: that would run the script's top level a second time in this
        # process; the workers import it.
        return f"{Path(main_file).resolve()}:{qualname}"
    spec = f"{module_name}:{qualname}"
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if "." not in module_name and file and Path(file).resolve().parent in _folders_of_this_run():
        # A module beside the script (or in the working directory) imports by name only from
        # there: export, load and report, run elsewhere later, find it by its file.
        spec = f"{Path(file).resolve()}:{qualname}"
    resolve(spec, what)
    return spec


def _folders_of_this_run() -> set[Path]:
    """The folders only this process imports from: the launching script's and the working
    directory. (Not ``sys.path[0]``: libraries insert their own folders there, Ray does.)"""
    folders = {Path.cwd().resolve()}
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if script:
        folders.add(Path(script).resolve().parent)
    return folders
