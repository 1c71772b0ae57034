"""SpecError: every problem found in a spec, each with file, line, column and key path."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from cpx.errors import CpxError


@dataclass(frozen=True)
class Location:
    """Where a value was written: a file (or `<command line>`), 1-based line and column."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Issue:
    """One problem: where, which key, what was expected, what was found, and a hint."""

    location: Location
    path: str
    message: str
    expected: str | None = None
    found: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        head = f"{self.location}: " + (f"{self.path}: " if self.path else "")
        parts = [self.message]
        if self.expected is not None:
            parts.append(f"expected {self.expected}")
        if self.found is not None:
            parts.append(f"found {self.found}")
        text = head + "; ".join(parts)
        if self.hint:
            text += f" ({self.hint})"
        return text


class SpecError(CpxError):
    """A spec that cannot be loaded; `issues` lists every problem found, in file order."""

    def __init__(self, issues: Iterable[Issue]):
        uniq: dict[tuple[str, str, str], Issue] = {}
        for i in issues:
            uniq.setdefault((str(i.location), i.path, i.message), i)
        self.issues = sorted(uniq.values(), key=lambda i: (i.location.file, i.location.line, i.location.column))
        n = len(self.issues)
        head = f"{n} error{'s' if n != 1 else ''} in spec"
        super().__init__(head + ":\n" + "\n".join(f"  {i}" for i in self.issues))


def did_you_mean(word: object, choices: Iterable[str]) -> str | None:
    """A `did you mean 'x'?` hint for a misspelt name, or None when nothing is close."""
    if not isinstance(word, str):
        return None
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if word.lower() in lowered:
            close = [lowered[word.lower()]]
    return f"did you mean {close[0]!r}?" if close else None


def show(value: object, limit: int = 60) -> str:
    """A short, readable rendering of a found value for an error message."""
    if isinstance(value, dict):
        text = "a mapping"
        if value:
            text += " with keys " + ", ".join(map(str, list(value)[:5]))
        return text
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    kind = type(value).__name__
    kind = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(kind, kind)
    return f"{kind} {text}"
