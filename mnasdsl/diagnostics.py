"""Compiler-style diagnostics: ``path:line:col: error: message`` plus the source line and a caret.

Every user-facing failure in mnasdsl is a :class:`MnasError` holding one or more
:class:`Diagnostic`; the CLI renders them and exits 1, so no traceback ever reaches a user.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Severity = Literal["error", "warning", "note"]


class Span(NamedTuple):
    """A 1-based source range; ``end_col`` is exclusive. Never part of IR equality."""

    line: int
    col: int
    end_line: int
    end_col: int

    def shifted(self, line: int, col: int) -> Span:
        """Re-anchor a span measured inside a token that starts at (line, col)."""
        return Span(
            self.line + line - 1,
            self.col + col - 1 if self.line == 1 else self.col,
            self.end_line + line - 1,
            self.end_col + col - 1 if self.end_line == 1 else self.end_col,
        )

    def to_json(self) -> dict[str, int]:
        return {"line": self.line, "col": self.col, "end_line": self.end_line, "end_col": self.end_col}


@dataclass(frozen=True, slots=True)
class Diagnostic:
    message: str
    span: Span | None = None
    path: str | None = None
    severity: Severity = "error"
    notes: tuple[str, ...] = ()

    def with_path(self, path: str | None) -> Diagnostic:
        return Diagnostic(self.message, self.span, path, self.severity, self.notes)

    def header(self) -> str:
        if self.path is None and self.span is None:  # not about a file: the tool's own prefix
            return f"mnasdsl: {self.severity}: {self.message}"
        where = self.path or "<input>"
        if self.span is not None:
            where = f"{where}:{self.span.line}:{self.span.col}"
        return f"{where}: {self.severity}: {self.message}"

    def render(self, source: str | None = None) -> str:
        """The rustc/ruff look: header, the offending source line, a caret run under the token."""
        out = [self.header()]
        if source is not None and self.span is not None:
            lines = source.splitlines()
            if 1 <= self.span.line <= len(lines):
                text = _printable(lines[self.span.line - 1])
                gutter = f"{self.span.line:>4} | "
                out.append(gutter + text)
                start = max(self.span.col, 1)
                if self.span.end_line == self.span.line:
                    width = max(1, self.span.end_col - self.span.col)
                else:
                    width = max(1, len(text) - start + 1)
                width = min(width, max(1, len(text) - start + 1))
                out.append(" " * (len(gutter) - 2) + "| " + " " * (start - 1) + "^" * width)
        for note in self.notes:
            out.append(f"  = note: {note}")
        return "\n".join(out)

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"severity": self.severity, "message": self.message, "path": self.path}
        if self.span is not None:
            d.update(self.span.to_json())
        if self.notes:
            d["notes"] = list(self.notes)
        return d


def _printable(line: str) -> str:
    # Keep columns aligned: every character maps to exactly one printed cell.
    return "".join(c if (c.isprintable() and ord(c) < 0x1100) or c == " " else "?" for c in line.replace("\t", " "))


class MnasError(Exception):
    """A user error: one or more diagnostics, optionally with the source they point into."""

    def __init__(
        self,
        diagnostics: Diagnostic | Iterable[Diagnostic] | str,
        source: str | None = None,
        path: str | None = None,
    ) -> None:
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        diags = [d if d.path is not None or path is None else d.with_path(path) for d in diagnostics]
        self.diagnostics: list[Diagnostic] = diags
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render(self.source) for d in self.diagnostics)

    def to_json(self) -> list[dict[str, object]]:
        return [d.to_json() for d in self.diagnostics]

    def located(self, path: str | None, source: str | None, *notes: str) -> MnasError:
        """This error pointed into the file it is about: a check run away from the parser (lowering under
        command-line overrides) has the span but neither the path nor the source line for the caret."""
        diags = [Diagnostic(d.message, d.span, d.path or path, d.severity, d.notes + notes) for d in self.diagnostics]
        return MnasError(diags, source=self.source if self.source is not None else source)

    def __str__(self) -> str:  # one readable message for API users too
        return self.render()


@dataclass
class DiagnosticSink:
    """Collects every problem of a file so that all are reported at once, not just the first."""

    path: str | None = None
    items: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, span: Span | None = None, *notes: str) -> None:
        self.items.append(Diagnostic(message, span, self.path, "error", tuple(notes)))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, source: str | None) -> None:
        if self.items:
            seen: set[tuple[object, ...]] = set()
            unique = []
            for d in sorted(self.items, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0)):
                key = (d.span, d.message)
                if key not in seen:
                    seen.add(key)
                    unique.append(d)
            raise MnasError(unique, source=source, path=self.path)


def dumps_diagnostics(err: MnasError) -> str:
    return json.dumps(err.to_json())
