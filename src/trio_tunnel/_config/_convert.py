"""The cattrs converter, and turning its failures into ``file: key.path: problem`` lines.

The converter only shapes the data: it refuses unknown keys, reports missing ones, insists
that tables are tables, and passes scalars through untouched (no ``int("8022")`` coercion) so
the classes can say what is wrong with them. When cattrs gives up on a table before building
it (unknown or missing keys), the table hook still runs the field checks on what is there, so
one run reports every problem. ``parse_config`` flattens cattrs' exception groups and the
classes' errors into ``<source>: <key path>: <problem>`` lines.
"""

from collections.abc import Callable, Mapping
from typing import Any, Final, cast, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from .._errors import ConfigError
from ._checks import _field_problems, _format_problem, _InvalidConfig, _Path, _Problem, _show
from ._schema import ClientCredentials, Config


def _as_is(value: object, _type: object) -> object:
    """Scalars reach the classes unchanged, so "8022" is reported, not coerced."""
    return value


def _is_array_of_tables(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for scalar in (int, float, str, bool):
        converter.register_structure_hook(scalar, _as_is)
    # Tables of plain values (``[logging] levels``) reach their class's converter and check.
    converter.register_structure_hook_func(lambda type_: type_ == Mapping[str, str], _as_is)

    def table_hook(cls: type) -> Callable[[Any, Any], Any]:
        structure: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, converter)
        fields = attrs.fields(cast("type[attrs.AttrsInstance]", cls))
        known = {field.name for field in fields}

        def check_what_is_there(value: Mapping[Any, Any], problems: list[_Problem]) -> None:
            # cattrs gives up on a table with unknown or missing keys before building it; check
            # what is there anyway, so that one run reports every problem in the table.
            reported = {path for path, _ in problems}
            if any(key not in known for key in value):
                try:
                    structure({k: v for k, v in value.items() if k in known}, cls)
                except Exception as exc:  # every failure becomes a message
                    problems += [p for p in _problems_from(exc, ()) if p[0] not in reported]
                    reported = {path for path, _ in problems}
            present: dict[str, object] = {}
            for field in fields:
                if field.name in value:
                    try:
                        present[field.name] = converter.structure(value[field.name], field.type)
                    except Exception:  # reported already, by cattrs
                        continue
            problems += [p for p in _field_problems(cls, present) if p[0] not in reported]

        def hook(value: Any, type_: Any) -> Any:
            if not isinstance(value, Mapping):
                raise _InvalidConfig([((), f"expected a table (got {_show(value)})")])
            try:
                return structure(value, type_)
            except Exception as exc:  # every failure becomes a message
                problems = _problems_from(exc, ())
            check_what_is_there(value, problems)
            raise _InvalidConfig(problems)

        return hook

    def array_hook(type_: Any) -> Callable[[Any, Any], Any]:
        (item_type, _) = get_args(type_)

        def hook(value: Any, _type: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise _InvalidConfig([((), f"expected an array of tables (got {_show(value)})")])
            items: list[Any] = []
            problems: list[_Problem] = []
            for index, item in enumerate(value):
                try:
                    items.append(converter.structure(item, item_type))
                except Exception as exc:  # every failure becomes a message
                    problems += _problems_from(exc, (index,))
            if problems:
                raise _InvalidConfig(problems)
            return tuple(items)

        return hook

    converter.register_structure_hook_factory(attrs.has, table_hook)
    converter.register_structure_hook_factory(_is_array_of_tables, array_hook)

    def clients_hook(value: Any, _type: Any) -> tuple[ClientCredentials, ...]:
        """``[clients.1]``, ``[clients.2]``: a table keyed by client id."""
        if not isinstance(value, Mapping):
            raise _InvalidConfig([((), f"expected a table (got {_show(value)})")])
        entries: list[ClientCredentials] = []
        problems: list[_Problem] = []
        for key, table in value.items():
            if key not in ("1", "2"):
                problems.append(((str(key),), "unknown client id (the clients are 1 and 2)"))
                continue
            if not isinstance(table, Mapping):
                problems.append(((key,), f"expected a table (got {_show(table)})"))
                continue
            try:
                entries.append(
                    converter.structure({**table, "client_id": int(key)}, ClientCredentials)
                )
            except Exception as exc:  # every failure becomes a message
                problems += _problems_from(exc, (key,))
        if problems:
            raise _InvalidConfig(problems)
        return tuple(sorted(entries, key=lambda entry: entry.client_id))

    converter.register_structure_hook_func(
        lambda type_: type_ == tuple[ClientCredentials, ...], clients_hook
    )
    return converter


def _problems_from(exc: BaseException, path: _Path) -> list[_Problem]:
    """Flatten a structuring failure into (key path, message) pairs."""
    if isinstance(exc, _InvalidConfig):
        return [(path + sub_path, message) for sub_path, message in exc.problems]
    if isinstance(exc, ForbiddenExtraKeysError):
        return [((*path, key), "unknown key") for key in sorted(map(str, exc.extra_fields))]
    if isinstance(exc, BaseValidationError):
        problems: list[_Problem] = []
        for sub in exc.exceptions:
            problems += _problems_from(sub, path + _note_path(sub))
        return problems
    if isinstance(exc, KeyError):
        return [(path, f"required {'table' if _missing_table(exc) else 'key'} missing")]
    if isinstance(exc, ConfigError):
        return [(path, str(exc))]
    return [(path, f"invalid value ({type(exc).__name__}: {exc})")]


def _notes(exc: BaseException) -> list[object]:
    notes: list[object] = getattr(exc, "__notes__", [])
    return [
        note for note in notes if isinstance(note, AttributeValidationNote | IterableValidationNote)
    ]


def _note_path(exc: BaseException) -> _Path:
    """The keys cattrs noted on ``exc`` while it passed up through the tables, outermost first."""
    path: list[str | int] = []
    for note in reversed(_notes(exc)):
        if isinstance(note, AttributeValidationNote):
            path.append(note.name)
        elif isinstance(note, IterableValidationNote):
            path.append(note.index)
    return tuple(path)


def _missing_table(exc: BaseException) -> bool:
    """Whether the missing key cattrs noted on ``exc`` names a table rather than a value."""
    notes = _notes(exc)
    type_ = getattr(notes[0], "type", None) if notes else None
    return isinstance(type_, type) and attrs.has(type_)


_converter: Final = _make_converter()


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Build a Config from already parsed TOML data.

    Raises ConfigError listing every problem, one per line, as ``<source>: <key path>: ...``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table (got {_show(data)})")
    try:
        return _converter.structure(data, Config)
    except Exception as exc:  # every failure becomes a message
        problems = _problems_from(exc, ())
    lines = [f"{source}: {_format_problem(problem)}" for problem in problems]
    raise ConfigError("\n".join(lines))
