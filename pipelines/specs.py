"""One validation for every job spec, whether it comes from flags, a ``--config`` file or Python.

A spec (``EnhanceJob``, ``TrainJob`` ...) is a frozen dataclass deriving from :class:`Spec`. At
construction each field is converted to its annotated type by the rule the command line applies
to a flag (:func:`convert`) and checked against its choices (:func:`choice`); then the spec's
own :meth:`Spec.validate` tests ranges and combinations. A bad value raises :class:`SpecError`,
whose message names the field (``workers must be >= 1``); the CLI renders the same error with
the flags instead (``--workers must be >= 1``), see :meth:`SpecError.render`.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import string
import types
import typing
from collections.abc import Callable
from typing import Any

from pipelines.errors import UserError


class SpecError(UserError):
    """A bad spec setting. ``template`` names fields as ``{field}`` placeholders; other
    placeholders are filled from ``values``. ``str()`` names the fields as Python spells them,
    :meth:`render` as the caller spells them (the CLI: flags)."""

    def __init__(self, template: str, **values: Any) -> None:
        self.template = template
        self.values = values
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        self.fields = tuple(name for name in names if name not in values)
        super().__init__(self.render(lambda name: name))

    def render(self, name_of: Callable[[str], str]) -> str:
        return self.template.format(**{name: name_of(name) for name in self.fields}, **self.values)


def choice(options: tuple, default: Any = dataclasses.MISSING) -> Any:
    """A spec field whose value must be one of ``options`` (or None where its type allows it);
    without ``default``, a required one."""
    return dataclasses.field(default=default, metadata={"choices": options})


class Spec:
    """Base of the job specs: converts and checks every field at construction, then calls
    :meth:`validate`, which subclasses override (not ``__post_init__``; ``check`` is a field of
    some specs)."""

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            converted = convert(field.name, value, hints.get(field.name, Any))
            options = field.metadata.get("choices")
            if options is not None and converted is not None and converted not in options:
                raise SpecError(
                    "{" + field.name + "} must be one of {options}, got {value!r}",
                    options=", ".join(map(str, options)),
                    value=converted,
                )
            if converted is not value:
                object.__setattr__(self, field.name, converted)
        self.validate()

    def validate(self) -> None:
        """Ranges and combinations of fields (raise :class:`SpecError`)."""


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def convert(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` (int, float, bool, str, a tuple of str, or None with one of
    them), by the rule of a flag: a number or a string that ``int()`` / ``float()`` parses, as
    ``--workers 2`` is; never a bool or a fraction for an int; a path for a str. Other hints pass
    values as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
        if value is None and len(kinds) < len(typing.get_args(hint)):
            return None
        if len(kinds) != 1:
            return value
        hint = kinds[0]
    converter = _CONVERTERS.get(hint)
    if converter is None:
        if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
            converter = _strings
        else:
            return value
    result = converter(value)
    if result is _BAD:
        raise SpecError(
            "{" + name + "} must be {wanted}, got {value!r}",
            wanted=_WANTED.get(hint, "a list of strings"),
            value=value,
        )
    return result


_BAD = object()


def _number(kind: type, abstract: type) -> Callable[[Any], Any]:
    """A converter to ``kind`` (int or float) that takes what the flag's ``type=kind`` takes:
    numbers of the ``abstract`` kind and strings that parse; never a bool."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, abstract | str):
            return _BAD
        try:
            return kind(value)
        except ValueError:
            return _BAD

    return convert


_int = _number(int, numbers.Integral)
_float = _number(float, numbers.Real)


def _bool(value: Any) -> Any:
    return value if isinstance(value, bool) else _BAD


def _str(value: Any) -> Any:
    """A string, or a path from Python (what the flag's string would be)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return value if isinstance(value, str) else _BAD


def _strings(value: Any) -> Any:
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return value if isinstance(value, tuple) else tuple(value)
    return _BAD


_CONVERTERS: dict[Any, Callable[[Any], Any]] = {int: _int, float: _float, bool: _bool, str: _str}
_WANTED = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
