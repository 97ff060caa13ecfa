"""Reading plan files: TOML, YAML and JSON, all into :class:`~tel400.PlanSet`."""

from __future__ import annotations

import json
import os
import tomllib

from . import limits
from .exceptions import PlanError
from .plans import PlanSet

FORMATS = ("toml", "yaml", "json")
_EXTENSIONS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}
#: Plan files larger than this are refused rather than parsed (see tel400.limits).
MAX_PLAN_BYTES = limits.MAX_FILE_BYTES


def load_plans(path: str | os.PathLike[str], *, refused: dict[str, PlanError] | None = None) -> PlanSet:
    """Load and validate a plan file; the format follows the extension.

    Args:
        path: a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file.
        refused: leave out numbers whose plan is invalid and put their errors
            here (see :meth:`tel400.PlanSet.from_dict`).

    Raises:
        PlanError: the file cannot be read or parsed, or a plan is invalid;
            the message names the file (and, for syntax errors, the line).
    """
    source = os.fspath(path)
    tree = read_plan_tree(source)
    return PlanSet.from_dict(tree, source=source, base_dir=os.path.dirname(os.path.abspath(source)), refused=refused)


def read_plan_tree(path: str | os.PathLike[str]) -> object:
    """The plain tree in a plan file, parsed but not validated (what :func:`load_plans` validates).

    Raises:
        PlanError: the file cannot be read or parsed (see :func:`load_plans`).
    """
    source = os.fspath(path)
    fmt = _EXTENSIONS.get(os.path.splitext(source)[1].lower())
    if fmt is None:
        raise PlanError(
            f"unknown plan file type; expected one of {', '.join(sorted(_EXTENSIONS))}", source=source
        )
    try:
        if os.path.getsize(source) > MAX_PLAN_BYTES:
            raise PlanError(f"file is larger than {MAX_PLAN_BYTES} bytes", source=source)
        with open(source, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise PlanError(f"cannot read plan file: {exc.strerror}", source=source) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlanError(f"not UTF-8 text (byte {exc.start})", source=source) from None
    return parse_text(text, fmt, source)


def loads_plans(text: str, fmt: str = "toml", *, source: str | None = None, base_dir: str | None = None,
                refused: dict[str, PlanError] | None = None) -> PlanSet:
    """Parse and validate plans from text in ``toml``, ``yaml`` or ``json``."""
    source = source or f"<{fmt}>"
    return PlanSet.from_dict(parse_text(text, fmt, source), source=source, base_dir=base_dir, refused=refused)


def parse_text(text: str, fmt: str, source: str) -> object:
    """The plain tree in a plan text, before validation.

    Raises:
        PlanError: the text does not parse, is nested too deeply, holds an
            integer too long to read, or more than
            :data:`tel400.limits.MAX_FILE_VALUES` values (YAML aliases
            counted each time they are used).
    """
    try:
        tree = _parse(text, fmt, source)
    except RecursionError:
        raise PlanError("nested too deeply to be a plan", source=source) from None
    except ValueError as exc:
        # Python refuses to read integers of more than 4300 digits (a ValueError
        # that is not the parsers' own syntax error).
        if "digits" not in str(exc):
            raise
        raise PlanError("a number has too many digits to be read", source=source) from None
    try:
        _check_size(tree, source)
    except RecursionError:
        raise PlanError("nested too deeply to be a plan", source=source) from None
    return tree


def _check_size(tree: object, source: str) -> None:
    """Refuse a tree with more values than a plan file may hold.

    Counted as validation would walk it, so a list shared through YAML
    aliases counts each time it is used (376 bytes of nested aliases make
    10**9 values); each distinct list or table is counted once and
    remembered, so this costs O(what the file holds), not O(what it expands to).
    """
    count = _values(tree, {})
    if count > limits.MAX_FILE_VALUES:
        raise PlanError(f"{count} values (YAML aliases count each time they are used); at most "
                        f"{limits.MAX_FILE_VALUES} (TEL400_MAX_FILE_VALUES)", source=source)


def _values(node: object, seen: dict[int, int]) -> int:
    """Values in ``node`` with every shared list and table expanded; ``seen``: counts by id."""
    if not isinstance(node, (dict, list)):
        return 1
    count = seen.get(id(node))
    if count is None:
        children = node.values() if isinstance(node, dict) else node
        count = seen[id(node)] = 1 + sum(_values(child, seen) for child in children)
    return count


def _parse(text: str, fmt: str, source: str) -> object:
    if fmt == "toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PlanError(f"invalid TOML: {exc}", source=source) from None
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=source) from None
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise PlanError("YAML plans need PyYAML: pip install 'tel400[yaml]'", source=source) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise PlanError(f"invalid YAML{where}: {problem}", source=source) from None
    raise PlanError(f"unknown plan format {fmt!r}; expected one of {', '.join(FORMATS)}", source=source)
