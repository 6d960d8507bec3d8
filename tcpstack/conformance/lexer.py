"""Scanner for packetdrill scripts: comments, nplab ``#ifdef`` blocks, logical lines, tokens.

packetdrill's own grammar treats newlines as blanks; in practice every event starts on a new line
and only bracketed arguments (a ``sendmsg`` msghdr, a pollfd array), backquoted shell commands and
``%{ }%`` python blocks run over several lines. So the scanner cuts the text into *logical lines*:
a physical line, continued while a ``(``, ``[`` or ``{`` is open or a command/code block is not
closed. Comments (``//`` to end of line, ``/* */``) become one blank; they are not recognised inside
strings, backquotes or python blocks, where ``//`` and ``#`` mean something else.

``#`` is a preprocessor directive only at the start of a line (the nplab FreeBSD dialect runs its
scripts through ``cpp``): ``#ifdef``, ``#ifndef``, ``#else``, ``#endif``, ``#define``, ``#undef``.
Lines in a branch that is not taken are scanned (so a quote or comment there cannot derail the
scanner) but never parsed.

:class:`Cursor` walks one logical line for the event parsers, and :func:`next_token` cuts a system
call's text into tokens; errors from both name the physical line and the offending token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import attrs

__all__ = [
    "ScriptError",
    "LogicalLine",
    "Cursor",
    "scan",
    "Token",
    "TokenKind",
    "next_token",
    "parse_int",
    "MAX_NESTING",
]

MAX_NESTING = 64  # brackets in one logical line, and #ifdef blocks: bounds recursion and memory

_SPECIAL = re.compile(r'[\n/"`%()\[\]{}]')
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_DIRECTIVE = re.compile(r"[ \t]*#[ \t]*([A-Za-z_]*)([^\n]*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN_AT = re.compile(r"\s*(\S{1,40})")
_NUMBER = re.compile(r"(\d{1,40}|0[xX][0-9a-fA-F]{1,40})\b")


class ScriptError(Exception):
    """A script that cannot be parsed: file, 1-based line, what failed, and the line's text."""

    def __init__(self, path: str, line: int, message: str, text: str | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        self.text = text
        where = f"{path}:{line}: {message}"
        super().__init__(f"{where}\n    {text}" if text else where)


@attrs.frozen(slots=True)
class LogicalLine:
    """One event's text with comments blanked out; strings, commands and code kept verbatim.

    ``marks`` are ``(offset, line)`` pairs: from ``offset`` in ``text`` on, the text comes from
    physical line ``line`` (for errors inside a multi-line argument list). ``source`` is the
    original text of the physical lines it spans, for error messages.
    """

    line: int
    text: str
    source: str
    marks: tuple[tuple[int, int], ...] = ()

    def line_at(self, offset: int) -> int:
        line = self.line
        for mark_offset, mark_line in self.marks:
            if mark_offset > offset:
                break
            line = mark_line
        return line


@attrs.define
class _Frame:
    """One open ``#ifdef``: whether its enclosing region is live, and which branch was taken."""

    parent_active: bool
    taken: bool
    line: int
    in_else: bool = False


class _Scanner:
    def __init__(self, text: str, defines: Iterable[str], path: str) -> None:
        self.s = text.replace("\r\n", "\n")
        self.physical = self.s.split("\n")
        self.path = path
        self.defined = set(defines)
        self.frames: list[_Frame] = []
        self.active = True
        self.line = 1
        self.buf: list[str] = []
        self.buf_len = 0
        self.marks: list[tuple[int, int]] = []
        self.first_line = 1
        self.depth = 0

    def error(self, line: int, message: str) -> ScriptError:
        text = self.physical[line - 1].strip() if 0 < line <= len(self.physical) else None
        return ScriptError(self.path, line, message, text)

    def _append(self, chunk: str) -> None:
        if not self.buf:
            self.first_line = self.line
        self.buf.append(chunk)
        self.buf_len += len(chunk)

    def _append_verbatim(self, chunk: str) -> None:
        """Append a chunk that may hold newlines (a command, a code block, a comment's lines)."""
        base = self.buf_len
        self._append(chunk)
        start = 0
        while (nl := chunk.find("\n", start)) >= 0:
            self.line += 1
            self.marks.append((base + nl + 1, self.line))
            start = nl + 1

    def _flush(self) -> LogicalLine | None:
        text = "".join(self.buf)
        marks = tuple(self.marks)
        first_line = self.first_line
        self.buf, self.buf_len, self.marks = [], 0, []
        stripped = text.lstrip()
        if not stripped or not self.active:
            return None
        lead = len(text) - len(stripped)
        start = LogicalLine(first_line, text, "", marks).line_at(lead)
        # Offsets shift by the stripped lead: keep marks consistent with the stripped text.
        marks = tuple((o - lead, ln) for o, ln in marks if o > lead)
        source = "\n".join(p.strip() for p in self.physical[start - 1 : self.line]).strip()
        return LogicalLine(start, stripped.rstrip(), source, marks)

    def lines(self) -> Iterator[LogicalLine]:
        s, n = self.s, len(self.s)
        pos = 0
        at_line_start = True
        while pos < n:
            if at_line_start:
                at_line_start = False
                if self.depth == 0 and not self.buf:
                    m = _DIRECTIVE.match(s, pos)
                    if m:
                        self._directive(m.group(1), m.group(2))
                        pos = m.end()
                        continue
            m = _SPECIAL.search(s, pos)
            if m is None:
                self._append(s[pos:])
                break
            if m.start() > pos:
                self._append(s[pos : m.start()])
            pos = m.start()
            ch = m.group()
            if ch == "\n":
                pos += 1
                if self.depth == 0:
                    flushed = self._flush()
                    self.line += 1
                    if flushed is not None:
                        yield flushed
                else:
                    self._append_verbatim("\n")
                at_line_start = True
            elif ch == "/":
                pos = self._slash(pos)
            elif ch == '"':
                sm = _STRING.match(s, pos)
                if sm is None:
                    raise self.error(self.line, "unterminated string: '\"' without its '\"'")
                self._append(sm.group())
                pos = sm.end()
            elif ch == "`":
                end = s.find("`", pos + 1)
                if end < 0:
                    raise self.error(self.line, "unterminated shell command: '`' without its '`'")
                self._append_verbatim(s[pos : end + 1])
                pos = end + 1
            elif ch == "%":
                if s.startswith("%{", pos):
                    end = s.find("}%", pos + 2)
                    if end < 0:
                        raise self.error(self.line, "unterminated python block: '%{' without '}%'")
                    self._append_verbatim(s[pos : end + 2])
                    pos = end + 2
                else:
                    self._append("%")
                    pos += 1
            elif not self.active:  # cpp ignores brackets in a skipped branch: so do we
                self._append(ch)
                pos += 1
            elif ch in "([{":
                self.depth += 1
                if self.depth > MAX_NESTING:
                    raise self.error(self.line, f"brackets nested deeper than {MAX_NESTING}")
                self._append(ch)
                pos += 1
            else:  # closing bracket; an unbalanced one is the line parser's to report
                self.depth = max(0, self.depth - 1)
                self._append(ch)
                pos += 1
        flushed = self._flush()
        if flushed is not None:
            yield flushed
        if self.frames:
            raise self.error(self.frames[-1].line, "#ifdef/#ifndef without a matching #endif")

    def _slash(self, pos: int) -> int:
        s = self.s
        nxt = s[pos + 1 : pos + 2]
        if nxt == "/":
            end = s.find("\n", pos)
            self._append(" ")
            return len(s) if end < 0 else end
        if nxt == "*":
            end = s.find("*/", pos + 2)
            if end < 0:
                raise self.error(self.line, "unterminated comment: '/*' without '*/'")
            # The comment's newlines still count as lines, but its text is dropped.
            self._append_verbatim(" " + "\n" * s.count("\n", pos, end))
            return end + 2
        self._append("/")
        return pos + 1

    def _directive(self, name: str, rest: str) -> None:
        line = self.line
        args = re.sub(r"//.*|/\*.*?\*/", "", rest).split()
        if name in ("ifdef", "ifndef", "define", "undef"):
            if len(args) != 1 or not _NAME.match(args[0]):
                raise self.error(line, f"#{name} needs one macro name, got {rest.strip()!r}")
            macro = args[0]
            if name == "define":
                if self.active:
                    self.defined.add(macro)
            elif name == "undef":
                if self.active:
                    self.defined.discard(macro)
            else:
                if len(self.frames) >= MAX_NESTING:
                    raise self.error(line, f"#ifdef blocks nested deeper than {MAX_NESTING}")
                taken = (macro in self.defined) == (name == "ifdef")
                self.frames.append(_Frame(self.active, taken, line))
                self.active = self.active and taken
        elif name in ("else", "endif"):
            if args:
                raise self.error(line, f"unexpected text after #{name}: {rest.strip()!r}")
            if not self.frames:
                raise self.error(line, f"#{name} without a matching #ifdef/#ifndef")
            if name == "else":
                frame = self.frames[-1]
                if frame.in_else:
                    raise self.error(line, f"second #else for the #ifdef of line {frame.line}")
                frame.in_else = True
                self.active = frame.parent_active and not frame.taken
            else:
                self.active = self.frames.pop().parent_active
        else:
            raise self.error(
                line,
                f"unsupported preprocessor directive #{name or rest.strip()!r} "
                "(supported: #ifdef, #ifndef, #else, #endif, #define, #undef)",
            )


def parse_int(text: str) -> int:
    """A decimal or ``0x`` hex literal; ``010`` is ten, as in packetdrill (``int(s, 0)`` fails)."""
    return int(text, 16) if text[:2] in ("0x", "0X") else int(text, 10)


def scan(text: str, *, defines: Iterable[str], path: str) -> Iterator[LogicalLine]:
    """Yield the logical lines of the live branches of ``text``; raise :class:`ScriptError`."""
    return _Scanner(text, defines, path).lines()


class Cursor:
    """A cursor over one logical line, with errors that name the physical line and the token."""

    def __init__(self, logical: LogicalLine, path: str) -> None:
        self.logical = logical
        self.text = logical.text
        self.path = path
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> ScriptError:
        at = self.pos if pos is None else pos
        m = _TOKEN_AT.match(self.text, at)
        where = f"at {m.group(1)!r}" if m else "at end of line"
        return ScriptError(
            self.path, self.logical.line_at(at), f"{message}, {where}", self.logical.source
        )

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def here(self) -> int:
        """Skip blanks and return the position of the next token."""
        self.skip_ws()
        return self.pos

    def accept(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        self.skip_ws()
        m = pattern.match(self.text, self.pos)
        if m:
            self.pos = m.end()
        return m

    def expect(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        m = self.accept(pattern)
        if m is None:
            raise self.error(f"expected {what}")
        return m

    def number(self, after: str, limit: int) -> int:
        """The integer after a keyword such as ``ack``, range-checked."""
        start = self.here()
        m = self.expect(_NUMBER, f"a number after {after!r}")
        value = parse_int(m.group(1))
        if value > limit:
            raise self.error(f"{after} {value} is out of range (at most {limit})", start)
        return value

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)

    def expect_end(self, what: str) -> None:
        if not self.at_end():
            raise self.error(f"unexpected text after {what}")


# -- expression tokens --------------------------------------------------------------------------


class TokenKind:
    INT = "int"
    HEX = "hex"
    WORD = "word"
    STRING = "string"
    ELLIPSIS = "..."
    OROR = "||"
    PUNCT = "punct"
    END = "end"


@attrs.frozen(slots=True)
class Token:
    kind: str
    text: str
    start: int
    end: int


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<ellipsis>\.\.\.)
    | (?P<hex>0[xX][0-9a-fA-F]{1,40})(?![\w.])
    | (?P<int>[0-9]{1,40})(?![\w.])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*")
    | (?P<oror>\|\|)
    | (?P<punct>[-|&()\[\]{},=])
    | (?P<end>\Z)
    )""",
    re.VERBOSE,
)

_KIND_OF_GROUP = {
    "ellipsis": TokenKind.ELLIPSIS,
    "hex": TokenKind.HEX,
    "int": TokenKind.INT,
    "word": TokenKind.WORD,
    "string": TokenKind.STRING,
    "oror": TokenKind.OROR,
    "punct": TokenKind.PUNCT,
    "end": TokenKind.END,
}


def next_token(text: str, pos: int) -> Token | None:
    """The token at ``pos`` (after blanks) in a system call's text, or None if none starts there."""
    m = _TOKEN.match(text, pos)
    if m is None or m.lastgroup is None:
        return None
    group = m.lastgroup
    return Token(_KIND_OF_GROUP[group], m.group(group), m.start(group), m.end())
