"""Errors of the rules compiler (:mod:`fastpath.rules`).

A rules file is written by people and reloaded into a live gateway, so every problem must
come back as one precise, single-line message an operator can act on without a traceback:
which file, which key, what was found and what was expected. Each condition has its own
class so that callers (the reload endpoint, tests) can tell them apart without parsing
text; all of them are ``ValueError`` subclasses through :class:`RulesError`.
"""

from __future__ import annotations

import reprlib
from decimal import Decimal


class _NoValue:
    """Marks "no offending value" (a missing key has none); ``None`` cannot, as it is a
    value like any other for the message."""

    def __repr__(self) -> str:
        return "NO_VALUE"


#: The ``value`` of an error that is about a key or a file rather than a value.
NO_VALUE = _NoValue()


class _ValueRepr(reprlib.Repr):
    """``repr`` bounded in length and depth, so that a whole mistyped table quoted in a
    message stays one short line; decimals print as written in the file (``0.001``, not
    ``Decimal('0.001')``) because TOML floats are parsed as ``Decimal``."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = 6
        self.maxlist = 6
        self.maxstring = 80
        self.maxother = 80
        self.maxlong = 40

    def repr_Decimal(self, value: Decimal, level: int) -> str:  # noqa: N802 (reprlib naming)
        return self.repr_str(str(value), level)[1:-1]


_render_value = _ValueRepr().repr


class RulesError(ValueError):
    """A rules file that cannot be compiled.

    ``str(error)`` is one line: ``"{source}: {key_path}: {message} (got {value!r})"``,
    where the key path and the value are left out when they do not apply.
    """

    def __init__(self, source: str, key_path: str | None, value: object, message: str) -> None:
        self.source = source
        self.key_path = key_path
        self.value = value
        self.message = message
        super().__init__(self._render())

    def _location(self) -> str | None:
        return self.key_path

    def _render(self) -> str:
        parts = [self.source]
        location = self._location()
        if location is not None:
            parts.append(location)
        text = ": ".join(parts + [self.message])
        if self.value is not NO_VALUE:
            text += f" (got {_render_value(self.value)})"
        return " ".join(text.splitlines())


class RulesFileError(RulesError):
    """The rules file cannot be read (missing, unreadable, not UTF-8)."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(source, None, NO_VALUE, message)


class RulesSyntaxError(RulesError):
    """The text is not valid TOML; located by line and column instead of a key path."""

    def __init__(self, source: str, line: int | None, column: int | None, message: str) -> None:
        self.line = line
        self.column = column
        super().__init__(source, None, NO_VALUE, message)

    def _location(self) -> str | None:
        if self.line is None:
            return None
        if self.column is None:
            return f"line {self.line}"
        return f"line {self.line}, column {self.column}"


class UnknownKeyError(RulesError):
    """A key that is not part of the rules vocabulary at that place (often a typo, which a
    silent ignore would turn into a missing limit)."""


class MissingKeyError(RulesError):
    """A required key is absent."""

    def __init__(self, source: str, key_path: str, message: str) -> None:
        super().__init__(source, key_path, NO_VALUE, message)


class InvalidValueError(RulesError):
    """A value of the wrong type, negative, inexact at its scale, out of range, or a name
    that is not a valid account, symbol or strategy name."""


class UndeclaredNameError(RulesError):
    """A restriction or an account x symbol override names an account or symbol that the
    file does not declare."""


class DuplicateRestrictionError(RulesError):
    """Two restrictions for the same scope (firm-wide or one account) and symbol; each
    restricted side mask must come from exactly one rule."""
