"""Checks of ``dmlviz run`` options and ``-p`` values, done before any notebook starts.

Each check raises ``ValueError`` (or ``FileNotFoundError``) with one line naming the option,
the value given and what is allowed; :func:`dmlviz.cli.main` prints it and exits with 2.

* ``--timeout``: a finite number of seconds > 0 (NaN, inf, 0 and negatives are refused).
* ``--out`` and ``--figures``: a folder, existing or not, with no file on its way (neither
  the path itself nor any parent may be a regular file).
* ``report --out`` / ``baseline --out``: a file in an existing folder.
* ``-p NAME VALUE``: when a selected notebook declares ``NAME`` with a non-None default, the
  value must have that default's type (an int is accepted for a float, a list for a tuple;
  ``None`` only where the default is ``None``).
* Path parameters — names ending in ``_npz``, ``_path`` or ``_file``, and the entries of
  ``datasets`` that are not a built-in dataset name — are resolved against the directory the
  command runs in (the kernel itself runs in ``notebooks/``), so ``-p embeddings_npz
  rel/my.npz`` means ``$PWD/rel/my.npz``; a missing one is refused with the full path tried.
  A single ``datasets`` string becomes a one-entry list.
"""

from __future__ import annotations

import ast
import logging
import math
import os
from pathlib import Path
from typing import Any

PATH_SUFFIXES = ("_npz", "_path", "_file")
DATASET_PARAMETERS = ("datasets",)
BUILTIN_DATASETS = ("shapes", "digits")


def check_timeout(timeout, option: str = "--timeout") -> None:
    """``--timeout``: None (the profile's default) or a finite number of seconds > 0."""
    if timeout is None:
        return
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or timeout <= 0):
        raise ValueError(f"{option} {timeout!r}: allowed is a finite number of seconds > 0 "
                         "(e.g. --timeout 600)")


def check_folder(option: str, path) -> None:
    """``--out`` / ``--figures``: ``path`` is a folder or can become one (no file on the way)."""
    if path is None:
        return
    p = Path(path).absolute()
    for candidate in (p, *p.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == p else f"is under the file {str(candidate)!r}"
                raise ValueError(f"{option} {str(path)!r}: {str(p)!r} {where}; allowed is a "
                                 "folder path (existing or new) with no file on its way")
            return


def check_output_file(option: str, path) -> None:
    """``--out FILE`` of ``report`` / ``baseline``: not a folder, and its folder exists (no
    file on the way)."""
    if path is None:
        return
    p = Path(path).absolute()
    if p.is_dir():
        raise ValueError(f"{option} {str(path)!r}: {str(p)!r} is a folder; allowed is a file path")
    blocker = next((c for c in p.parents if c.exists() and not c.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{option} {str(path)!r}: {str(p)!r} is under the file "
                         f"{str(blocker)!r}; allowed is a file in an existing folder")
    if not p.parent.is_dir():
        raise ValueError(f"{option} {str(path)!r}: the folder {str(p.parent)!r} does not exist; "
                         "allowed is a file in an existing folder")


def _declared(default_text: str):
    """The notebook's declared default as a Python value, or ``...`` when not a literal."""
    try:
        return ast.literal_eval(default_text)
    except (ValueError, SyntaxError, TypeError):
        return ...


def _type_ok(value, default) -> bool:
    if default is None or default is ...:
        return True
    if value is None:
        return False
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def _type_name(default) -> str:
    if isinstance(default, bool):
        return "True or False"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, (tuple, list)):
        return "a tuple or list, e.g. '(1, 2)'"
    if isinstance(default, str):
        return "a string"
    return "an int" if isinstance(default, int) else f"a {type(default).__name__}"


def check_parameter_types(parameters: dict[str, Any], notebooks) -> None:
    """``-p`` values against the type of each selected notebook's declared default."""
    for name, value in parameters.items():
        for nb in notebooks:
            if name not in nb.parameters:
                continue
            text = nb.parameters[name].get("default")
            default = _declared(text) if isinstance(text, str) else text
            if not _type_ok(value, default):
                raise ValueError(f"-p {name} {value!r}: a {type(value).__name__}, but "
                                 f"{nb.name} declares {name} = {text}; allowed is "
                                 f"{_type_name(default)}")


def _resolve(name: str, value, cwd: Path, *, folder: bool = False) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"-p {name} {value!r}: a {type(value).__name__}; allowed is a path "
                         "(a string)")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else cwd / path
    path = Path(os.path.normpath(path))
    ok = path.is_dir() if folder else path.exists()
    if not ok:
        what = "folder" if folder else "file"
        extra = (f" (the relative path {str(value)!r} is resolved against the directory the "
                 f"command runs in, {str(cwd)!r})") if not Path(value).is_absolute() else ""
        raise FileNotFoundError(f"-p {name} {str(value)!r}: the {what} {str(path)!r} does not "
                                f"exist{extra}")
    return str(path)


def resolve_path_parameters(parameters: dict[str, Any], cwd: str | os.PathLike | None = None
                            ) -> dict[str, Any]:
    """A copy of ``parameters`` with path values made absolute against ``cwd`` (default: the
    current directory) and checked to exist. ``None`` values are left alone."""
    cwd = Path(cwd or os.getcwd()).absolute()
    out = dict(parameters)
    for name, value in parameters.items():
        if value is None:
            continue
        if name.endswith(PATH_SUFFIXES):
            out[name] = _resolve(name, value, cwd)
        elif name in DATASET_PARAMETERS:
            entries = [value] if isinstance(value, (str, os.PathLike)) else value
            if not isinstance(entries, (list, tuple)):
                raise ValueError(f"-p {name} {value!r}: allowed is a list of names "
                                 f"{BUILTIN_DATASETS} or folders, e.g. \"['shapes', 'my/data']\"")
            out[name] = [e if e in BUILTIN_DATASETS else _resolve(name, e, cwd, folder=True)
                         for e in entries]
    return out


def check_run_arguments(args, parameters: dict[str, Any]) -> dict[str, Any]:
    """Everything ``dmlviz run`` can check before a notebook starts; returns the ``-p``
    values with path parameters resolved (see the module docstring).

    Raises:
        ValueError, FileNotFoundError: one line naming the option, the value and what is
            allowed.
    """
    from dmlviz import runner

    check_timeout(args.timeout)
    check_folder("--out", args.out)
    check_folder("--figures", args.figures)
    if parameters:
        quiet = logging.getLogger("papermill.translators")  # runner.run reports these once
        level, quiet.level = quiet.level, logging.ERROR
        try:
            notebooks = runner.discover(args.notebooks)
        finally:
            quiet.setLevel(level)
        chosen = runner.select(list(args.names), notebooks)
        runner.check_overrides(parameters, chosen)  # unknown names first
        check_parameter_types(parameters, chosen)
        parameters = resolve_path_parameters(parameters)
    return parameters
