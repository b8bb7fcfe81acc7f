"""Stage 1 of the config pipeline: bytes -> plain data, with the place of every key and value.

PyYAML's own loaders are not safe enough for a config language: they silently keep the
last of two equal keys and expand aliases without bound. So the document is composed
into nodes (cheap: aliases stay shared) and built into Python values here, counting
every node built and recording each one's line and column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from beamctl.config.problems import Path_, Problem, format_path

MAX_BYTES = 1 << 20  # a beam.yaml is a page of settings; a megabyte is a wrong file or an attack
MAX_NODES = 50_000  # values built after alias expansion; a "billion laughs" file passes it at once
MAX_DEPTH = 64  # nesting; beam.yaml needs 3

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BOOL_WORDS = "yes/no/on/off/true/false"
_PLAIN_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")


@dataclass
class Document:
    """Parsed data plus where each part of it was written."""

    file: str
    data: Any
    value_pos: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_pos: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    source: dict[Path_, str] = field(default_factory=dict)  # scalars as written, for messages

    def place(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Line and column of `path` (of its key when `key`), else of its nearest parent."""
        if key and path in self.key_pos:
            return self.key_pos[path]
        while path:
            if path in self.value_pos:
                return self.value_pos[path]
            path = path[:-1]
        return self.value_pos.get((), (1, 1))

    def problem(self, path: Path_, message: str, *, key: bool = False, severity: str = "error") -> Problem:
        line, col = self.place(path, key=key)
        return Problem(line, col, self.file, format_path(path), message, severity)


class _TooBig(Exception):
    def __init__(self, mark: yaml.Mark | None, message: str) -> None:
        self.mark, self.message = mark, message


def _at(mark: yaml.Mark | None) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.count = 0
        self.problems: list[Problem] = []
        self._scalars = yaml.constructor.SafeConstructor()

    def _problem(self, mark: yaml.Mark | None, path: Path_, message: str) -> None:
        line, col = _at(mark)
        self.problems.append(Problem(line, col, self.doc.file, format_path(path), message))

    def build(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(node.start_mark, f"the document expands to more than {MAX_NODES} values "
                          "(aliases referring to aliases?); a beam.yaml needs a few dozen")
        if depth > MAX_DEPTH:
            raise _TooBig(node.start_mark, f"nesting deeper than {MAX_DEPTH} levels")
        self.doc.value_pos.setdefault(path, _at(node.start_mark))
        if isinstance(node, yaml.ScalarNode):
            self.doc.source.setdefault(path, node.value)
            try:
                return self._scalars.construct_object(node)
            except yaml.YAMLError as e:
                self._problem(node.start_mark, path, f"cannot read this value: {_what(e)}")
                return None
        if node.tag not in _PLAIN_TAGS and not isinstance(node, yaml.ScalarNode):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self._problem(node.start_mark, path, f"the tag {tag} is not allowed; beam.yaml holds "
                          "plain values, lists and mappings")
            return None
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
        return self._mapping(node, path, depth)

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        merged: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.extend(_merge_sources(value_node))
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in first_seen:
                self._problem(key_node.start_mark, path + (key,),
                              f"duplicate key '{key}' (first at line {first_seen[key]}); "
                              "YAML would silently keep only the last one, so remove one of them")
                continue
            first_seen[key] = line
            self.doc.key_pos[path + (key,)] = _at(key_node.start_mark)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        for source in merged:  # `<<: *anchor` fills in keys not written explicitly
            for key_node, value_node in source.value:
                key = self._key(key_node, path)
                if key is not None and key not in out:
                    self.doc.key_pos.setdefault(path + (key,), _at(key_node.start_mark))
                    out[key] = self.build(value_node, path + (key,), depth + 1)
        return out

    def _key(self, key_node: yaml.Node, path: Path_) -> str | None:
        key = self.build(key_node, path + ("<key>",)) if isinstance(key_node, yaml.ScalarNode) else None
        self.doc.value_pos.pop(path + ("<key>",), None)
        if isinstance(key, str):
            return key
        if isinstance(key, bool):
            msg = (f"the key '{key_node.value}' is read as a boolean (YAML 1.1 reads {_BOOL_WORDS} so); "
                   f"write it in quotes: \"{key_node.value}\"")
        else:
            msg = "keys must be plain strings" + (f", not {type(key).__name__} {key_node.value!r}"
                                                  if isinstance(key_node, yaml.ScalarNode) else "")
        self._problem(key_node.start_mark, path, msg)
        return None


def _merge_sources(node: yaml.Node) -> list[yaml.MappingNode]:
    if isinstance(node, yaml.MappingNode):
        return [node]
    if isinstance(node, yaml.SequenceNode):
        return [n for n in node.value if isinstance(n, yaml.MappingNode)]
    return []


def _char_at(text: str, line: int, col: int) -> str:
    lines = text.split("\n")
    return lines[line - 1][col - 1 : col] if 0 < line <= len(lines) else ""


def _what(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e)
    if "expected a single document" in str(getattr(e, "context", "")):
        return "a beam.yaml holds one document; remove the second '---' and what follows it"
    context = getattr(e, "context", None)
    return f"{problem} ({context})" if context and context not in problem else problem


def _decode(raw: bytes, file: str) -> str | Problem:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        return Problem(line, col, file, format_path(()),
                       f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as UTF-8")
    return text.removeprefix("\ufeff")


def parse(raw: bytes, file: str) -> tuple[Document, list[Problem]]:
    """Parse `raw` (the file's bytes). Problems are returned, never raised."""
    doc = Document(file, None)
    top = format_path(())
    if len(raw) > MAX_BYTES:
        return doc, [Problem(1, 1, file, top, f"the file is {len(raw) / (1 << 20):.1f} MiB; a beam.yaml "
                             f"may be at most {MAX_BYTES >> 20} MiB (is this the right file?)")]
    text = _decode(raw, file)
    if isinstance(text, Problem):
        return doc, [text]
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        line, col = _at(e.problem_mark or e.context_mark)
        if _char_at(text, line, col) == "\t":
            return doc, [Problem(line, col, file, top,
                                 "a tab character; YAML indentation must use spaces, not tabs")]
        return doc, [Problem(line, col, file, top, f"invalid YAML: {_what(e)}")]
    except yaml.YAMLError as e:
        return doc, [Problem(1, 1, file, top, f"invalid YAML: {_what(e)}")]
    if node is None:
        return doc, [Problem(1, 1, file, top, "the file is empty; a beam.yaml needs at least `name` and "
                             "`handler` (`beamctl init` writes a commented example)")]
    builder = _Builder(doc)
    try:
        doc.data = builder.build(node, ())
    except _TooBig as e:
        line, col = _at(e.mark)
        return doc, [Problem(line, col, file, top, e.message)]
    if builder.problems:
        return doc, builder.problems
    if not isinstance(doc.data, dict):
        kind = {list: "a list", str: "a single string"}.get(type(doc.data), f"a single {type(doc.data).__name__}")
        return doc, [Problem(*doc.place(()), file, top,
                             f"the top level must be a mapping of settings (`key: value` lines), not {kind}")]
    return doc, []
