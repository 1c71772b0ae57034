"""YAML loading that remembers where every key and value was written.

PyYAML's compose API gives a node tree with marks; we build plain Python values from it
ourselves, so that duplicate keys, recursive aliases and merge keys (`<<`) are handled the
way a spec needs, and every value's position can be looked up by its key path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cpx.errors import CpxError
from cpx.spec._errors import Issue, Location, SpecError

KeyPath = tuple[Any, ...]

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loader with YAML 1.2 floats (`5e-5` is a number, as a researcher means it) and
    booleans (only true/false)."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
# YAML 1.2 booleans: only true and false. PyYAML follows YAML 1.1, where yes/no/on/off (and
# y/n in some tools) are booleans too: `case_insensitive: yes` must be the string "yes" (and so
# an error where a boolean is expected), not a silent True; a persona named `no` stays a name.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != _BOOL_TAG] for k, v in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class Doc:
    """Plain data from one YAML text plus the location of every value and mapping key."""

    data: Any
    file: str
    marks: dict[KeyPath, Location] = field(default_factory=dict)
    key_marks: dict[KeyPath, Location] = field(default_factory=dict)

    def where(self, path: KeyPath, key: bool = False) -> Location:
        """The location of the value (or key) at `path`, else of its nearest written ancestor."""
        path = tuple(path)
        if key and path in self.key_marks:
            return self.key_marks[path]
        while path:
            if path in self.marks:
                return self.marks[path]
            path = path[:-1]
        return self.marks.get((), Location(self.file, 1, 1))


def _loc(file: str, mark: Any) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def read_text(path: Path, where: Location | None = None, what: str = "spec", shown: str | None = None) -> str:
    """A file's text; a missing, unreadable, binary or non-UTF-8 file is a SpecError.

    `shown` is the name to print (as the user wrote it), default the path.
    """
    at = where or Location(str(path))
    name = shown if shown is not None else str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([Issue(at, "", f"{what} file {name!r} does not exist")]) from None
    except IsADirectoryError:
        raise SpecError([Issue(at, "", f"{what} file {name!r} is a directory")]) from None
    except OSError as e:
        raise SpecError([Issue(at, "", f"cannot read {what} file {name!r}: {e.strerror}")]) from None
    if b"\0" in raw[:8192]:
        raise SpecError([Issue(at, "", f"{what} file {name!r} is not a text file (it contains NUL bytes)")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(
            [Issue(at, "", f"{what} file {name!r} is not UTF-8 text (bad byte at offset {e.start})")]
        ) from None


def _tab_issues(text: str, file: str, upto_line: int) -> list[Issue]:
    issues = []
    for n, line in enumerate(text.splitlines()[:upto_line], start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent and line.strip():
            issues.append(
                Issue(
                    Location(file, n, indent.index("\t") + 1),
                    "",
                    "tab character in indentation",
                    expected="spaces (YAML does not allow tabs for indentation)",
                    found="a tab",
                )
            )
    return issues


def _missing_colon(text: str, e: Any) -> tuple[int, int, str] | None:
    """(line, column, message) for the two ways PyYAML reports a key written without its ':',
    both a line late and in parser words: "could not find expected ':'" (the next line's
    position; the key's is the context mark) and "mapping values are not allowed here" (on the
    line below a bare word whose indented block made it look like a multi-line string)."""
    lines = text.splitlines()

    def said(line: int) -> tuple[int, int, str] | None:
        if not 0 <= line < len(lines):
            return None
        raw = lines[line]
        body = raw.strip()
        if not body or body.startswith("#") or ":" in body:
            return None
        body = body.removeprefix("- ").strip()
        word = body.split()[0] if body.split() else body
        return (
            line + 1,
            raw.index(body[0]) + 1,
            f"missing ':' after the key {word!r} (write `{word}: value`, or `{word}:` with its block indented below)",
        )

    problem = e.problem or ""
    if "could not find expected ':'" in problem and e.context_mark is not None:
        return said(e.context_mark.line)
    if "mapping values are not allowed" in problem and e.problem_mark is not None:
        line = e.problem_mark.line - 1
        while line >= 0 and (not lines[line].strip() or lines[line].strip().startswith("#")):
            line -= 1
        return said(line)
    return None


def parse_yaml(text: str, file: str) -> Doc:
    """Parse one YAML document into plain data with positions; errors are SpecErrors."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        tabs = _tab_issues(text, file, line)
        if tabs:
            raise SpecError(tabs) from None
        col = mark.column + 1 if mark else 1
        missing = _missing_colon(text, e)
        if missing is not None:
            line, col, what = missing
            raise SpecError([Issue(Location(file, line, col), "", what)]) from None
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise SpecError([Issue(Location(file, line, col), "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as e:
        raise SpecError([Issue(Location(file, 1, 1), "", f"YAML error: {e}")]) from None
    except RecursionError:
        raise SpecError([Issue(Location(file, 1, 1), "", "the YAML is nested too deeply")]) from None
    doc = Doc(None, file)
    if node is None:
        return doc
    builder = _Builder(file, doc)
    try:
        doc.data = builder.build(node, ())
    except RecursionError:
        raise SpecError([Issue(Location(file, 1, 1), "", "the YAML is nested too deeply")]) from None
    except _TooBig as e:
        raise SpecError(
            [
                Issue(
                    e.location,
                    "",
                    f"more than {MAX_VALUES:,} values after expanding aliases",
                    hint="an alias that repeats itself many times?",
                )
            ]
        ) from None
    if builder.issues:
        raise SpecError(builder.issues)
    return doc


MAX_VALUES = 200_000  # a spec is small; this stops an alias "bomb" from eating the memory


class _TooBig(CpxError):
    def __init__(self, location: Location):
        self.location = location


class _Builder:
    def __init__(self, file: str, doc: Doc):
        self.count = 0
        self.file = file
        self.doc = doc
        self.issues: list[Issue] = []
        self.constructor = _Loader("")
        self.stack: set[int] = set()

    def build(self, node: Any, path: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBig(_loc(self.file, node.start_mark))
        self.doc.marks.setdefault(path, _loc(self.file, node.start_mark))
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.constructor.construct_object(node)
            except yaml.YAMLError as e:
                self.issues.append(Issue(_loc(self.file, node.start_mark), dotted(path), f"bad scalar: {e}"))
                return None
        if id(node) in self.stack:
            self.issues.append(
                Issue(_loc(self.file, node.start_mark), dotted(path), "recursive alias: a node contains itself")
            )
            return None
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self.stack.discard(id(node))

    def _mapping(self, node: Any, path: KeyPath) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: list[Any] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        self.issues.append(
                            Issue(
                                _loc(self.file, src.start_mark),
                                dotted(path),
                                "`<<` merges mappings only",
                                expected="an alias of a mapping (<<: *name)",
                                found="something else",
                            )
                        )
                        continue
                    merged.append(src)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.issues.append(
                    Issue(
                        _loc(self.file, key_node.start_mark),
                        dotted(path),
                        "a key must be a plain name",
                        found="a mapping or list used as a key",
                    )
                )
                continue
            key = self.constructor.construct_object(key_node)
            if key in out:
                first = self.doc.key_marks[path + (key,)]
                self.issues.append(
                    Issue(
                        _loc(self.file, key_node.start_mark),
                        dotted(path + (key,)),
                        "duplicate key",
                        hint=f"first written at line {first.line}",
                    )
                )
                continue
            self.doc.key_marks[path + (key,)] = _loc(self.file, key_node.start_mark)
            out[key] = self.build(value_node, path + (key,))
        # Explicit keys win over merged ones; among merged mappings the first wins (YAML spec).
        for src in merged:
            if id(src) in self.stack:
                self.issues.append(
                    Issue(_loc(self.file, src.start_mark), dotted(path), "recursive alias: a node merges itself")
                )
                continue
            self.stack.add(id(src))
            try:
                value = self._mapping(src, path + ("<<",))
            finally:
                self.stack.discard(id(src))
            for k, v in value.items():
                if k not in out:
                    out[k] = v
                    _copy_marks(self.doc, path + ("<<", k), path + (k,))
        return out


def _copy_marks(doc: Doc, old: KeyPath, new: KeyPath) -> None:
    n = len(old)
    for table in (doc.marks, doc.key_marks):
        for p in [p for p in table if p[:n] == old]:
            table.setdefault(new + p[n:], table[p])


def dotted(path: KeyPath) -> str:
    """`arms.B.phases[1].data` for ('arms', 'B', 'phases', 1, 'data')."""
    out = ""
    for p in path:
        if isinstance(p, int) and not isinstance(p, bool):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out
