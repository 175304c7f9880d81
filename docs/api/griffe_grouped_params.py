"""Griffe extension for the API reference: hpelib's grouped ``Args:`` entries and Sphinx roles.

hpelib's docstrings document parameters that share a meaning on one line,
``range_angle, range_edges: optional per-range breakdown ...`` (sometimes with the name list
wrapped over two lines). Griffe's Google parser takes one name per entry and would report
"a, b" as an unknown parameter, so before parsing this rewrites every grouped entry into one
entry per name, each with the shared description. Every name is then still checked against
the signature: a renamed parameter keeps failing ``mkdocs build --strict``.

It also renders Sphinx cross-reference roles (``:func:`hpelib.nn.create_backbone```,
``:class:`~hpelib.methods.HPEModule```), which Markdown would print as written, as inline
code of the name (the last part only after ``~``, as Sphinx shows it).

Loaded from ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``);
it changes only the text griffe parses, never the source files.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

__all__ = ["GroupedParams", "expand_grouped_params", "strip_sphinx_roles"]

# Section titles whose entries are parameter names (Google style, as griffe reads them).
_SECTION = re.compile(
    r"^\s*(Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments|Other Parameters)\s*:\s*$"
)
_NAME = r"\**[A-Za-z_]\w*"
# "a, b, c: description" (no "(type)" part: that form is griffe's own, one name).
_GROUPED = re.compile(rf"^(?P<indent>\s*)(?P<names>{_NAME}(?:\s*,\s*{_NAME})+)\s*:(?P<rest>.*)$")
# A name list wrapped before its colon: "a, b, c," with the rest on the next line.
_WRAPPED = re.compile(rf"^\s*{_NAME}(?:\s*,\s*{_NAME})*\s*,\s*$")

# ":func:`name`", ":py:class:`~a.b.Name`", ...
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`")


def strip_sphinx_roles(text: str) -> str:
    """``:role:`a.b``` -> ```a.b```; ``:role:`~a.b``` -> ```b```."""

    def code(match: re.Match[str]) -> str:
        target = match["target"]
        return f"`{target.rsplit('.', 1)[-1] if match['tilde'] else target}`"

    return _ROLE.sub(code, text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _join_wrapped_names(lines: list[str]) -> list[str]:
    """``"a, b,"`` followed by ``"c: ..."`` at the same indent -> ``"a, b, c: ..."``."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _WRAPPED.match(line) and i + 1 < len(lines) and _indent(lines[i + 1]) == _indent(line):
            lines[i + 1] = f"{line.rstrip()} {lines[i + 1].strip()}"
        else:
            out.append(line)
        i += 1
    return out


def expand_grouped_params(text: str) -> str:
    """Docstring ``text`` with each grouped parameter entry of its parameter sections
    rewritten as one entry per name, all with the entry's description (first line and
    continuation lines). Other text is returned unchanged."""
    lines = _join_wrapped_names(text.split("\n"))
    out: list[str] = []
    section_indent: int | None = None  # indent of the current section's title line
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if section_indent is not None and stripped and _indent(line) <= section_indent:
            section_indent = None  # a line back at the title's indent ends the section
        if _SECTION.match(line):
            section_indent = _indent(line)
            out.append(line)
            i += 1
            continue
        match = _GROUPED.match(line) if section_indent is not None else None
        if match is None:
            out.append(line)
            i += 1
            continue
        # The entry's continuation: following lines indented deeper than its name.
        end = i + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(line)):
            end += 1
        while end > i + 1 and not lines[end - 1].strip():
            end -= 1  # trailing blank lines belong to what follows
        continuation = lines[i + 1 : end]
        for name in re.split(r"\s*,\s*", match["names"]):
            out.append(f"{match['indent']}{name}:{match['rest']}")
            out.extend(continuation)
        i = end
    return "\n".join(out)


class GroupedParams(griffe.Extension):
    """Expands grouped ``Args:`` entries and Sphinx roles of every loaded object's docstring
    before griffe parses it."""

    def on_instance(self, *, node: ast.AST | griffe.ObjectNode, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None:
            docstring.value = strip_sphinx_roles(expand_grouped_params(docstring.value))
