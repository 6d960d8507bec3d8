"""Packetdrill system-call lines: ``name(args...) = result [ERRNO] [(note)]``.

The arguments and the expected result use packetdrill's expression syntax (integers, symbols,
strings, ``...``, lists, structs with ``name=value`` or ``name(index)=value`` fields, calls such as
``htons(8080)``, ``|`` and ``||``), parsed here into the :mod:`tcpstack.conformance.nodes`
expression AST by recursive descent on the line's :class:`~tcpstack.conformance.lexer.Cursor`.
:mod:`tcpstack.conformance.script` calls :func:`parse_syscall` for each system-call event.
"""

from __future__ import annotations

import re

from tcpstack.conformance.lexer import (
    MAX_NESTING,
    Cursor,
    Token,
    TokenKind,
    next_token,
    parse_int,
)
from tcpstack.conformance.nodes import (
    BinaryExpr,
    CallExpr,
    EllipsisExpr,
    Expr,
    IntExpr,
    ListExpr,
    StringExpr,
    StructExpr,
    StructField,
    SymbolExpr,
    SyscallEvent,
)

__all__ = ["SYSCALL_NAME", "parse_syscall"]

SYSCALL_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_ERRNO = re.compile(r"E[A-Z0-9]+\Z")
_STRING_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v"}


class _ExprParser:
    """Recursive descent over packetdrill's expression syntax, on the line's cursor."""

    def __init__(self, line: Cursor) -> None:
        self.line = line

    def peek(self) -> Token:
        tok = next_token(self.line.text, self.line.pos)
        if tok is None:
            raise self.line.error("unexpected character")
        return tok

    def take(self) -> Token:
        tok = self.peek()
        self.line.pos = tok.end
        return tok

    def is_punct(self, tok: Token, text: str) -> bool:
        return tok.kind == TokenKind.PUNCT and tok.text == text

    def expect(self, text: str, what: str) -> Token:
        tok = self.peek()
        if not self.is_punct(tok, text):
            raise self.line.error(f"expected {what}", tok.start)
        return self.take()

    def expr(self, depth: int = 0) -> Expr:
        left = self.bit_or(depth)
        while self.peek().kind == TokenKind.OROR:
            self.take()
            left = BinaryExpr("||", left, self.bit_or(depth))
        return left

    def bit_or(self, depth: int) -> Expr:
        left = self.unary(depth)
        while self.is_punct(self.peek(), "|"):
            self.take()
            left = BinaryExpr("|", left, self.unary(depth))
        return left

    def unary(self, depth: int) -> Expr:
        if self.is_punct(self.peek(), "-"):
            self.take()
            tok = self.take()
            if tok.kind not in (TokenKind.INT, TokenKind.HEX):
                raise self.line.error("expected a number after '-'", tok.start)
            return IntExpr(-parse_int(tok.text), hex=tok.kind == TokenKind.HEX)
        return self.primary(depth)

    def primary(self, depth: int) -> Expr:
        if depth > MAX_NESTING:
            raise self.line.error(f"expression nested deeper than {MAX_NESTING}")
        tok = self.take()
        if tok.kind == TokenKind.ELLIPSIS:
            return EllipsisExpr()
        if tok.kind == TokenKind.INT:
            return IntExpr(int(tok.text))
        if tok.kind == TokenKind.HEX:
            return IntExpr(int(tok.text, 16), hex=True)
        if tok.kind == TokenKind.STRING:
            return StringExpr(_unescape(tok.text[1:-1]))
        if tok.kind == TokenKind.WORD:
            if self.is_punct(self.peek(), "("):
                self.take()
                return CallExpr(tok.text, self.items(")", depth + 1))
            return SymbolExpr(tok.text)
        if self.is_punct(tok, "["):
            return ListExpr(self.items("]", depth + 1))
        if self.is_punct(tok, "{"):
            return StructExpr(self.fields(depth + 1))
        raise self.line.error("expected an expression", tok.start)

    def items(self, close: str, depth: int) -> tuple[Expr, ...]:
        """Comma-separated expressions up to ``close``; the opening bracket is already taken."""
        if self.is_punct(self.peek(), close):
            self.take()
            return ()
        items = [self.expr(depth)]
        while not self.is_punct(self.peek(), close):
            self.expect(",", f"',' or '{close}'")
            items.append(self.expr(depth))
        self.take()
        return tuple(items)

    def fields(self, depth: int) -> tuple[StructField, ...]:
        if self.is_punct(self.peek(), "}"):
            self.take()
            return ()
        fields = [self.field(depth)]
        while not self.is_punct(self.peek(), "}"):
            self.expect(",", "',' or '}'")
            fields.append(self.field(depth))
        self.take()
        return tuple(fields)

    def field(self, depth: int) -> StructField:
        """``name=value``, ``name(index)=value`` or a positional value (backtracks to tell)."""
        save = self.line.pos
        tok = self.peek()
        if tok.kind == TokenKind.WORD:
            self.take()
            index: Expr | None = None
            if self.is_punct(self.peek(), "("):
                self.take()
                args = self.items(")", depth + 1)
                index = args[0] if len(args) == 1 else None
                if len(args) != 1 or not self.is_punct(self.peek(), "="):
                    self.line.pos = save  # a call such as htons(8080), not name(index)=
                    return StructField(None, self.expr(depth))
            if self.is_punct(self.peek(), "="):
                self.take()
                return StructField(tok.text, self.expr(depth), index)
            self.line.pos = save
        return StructField(None, self.expr(depth))


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] == "x":
            return chr(int(esc[1:], 16))
        if esc[0] in "01234567":
            return chr(int(esc, 8))
        return _ESCAPES.get(esc, esc)

    return _STRING_ESCAPE.sub(one, body)


def parse_syscall(line: Cursor) -> SyscallEvent:
    name = line.expect(SYSCALL_NAME, "a system call name").group(1)
    parser = _ExprParser(line)
    args = parser.items(")", 1)
    parser.expect("=", "'=' and the expected result")
    result = parser.expr()
    errno: str | None = None
    tok = parser.peek()
    if tok.kind == TokenKind.WORD:
        if not _ERRNO.match(tok.text):
            raise line.error("expected an errno name such as EAGAIN after the result", tok.start)
        errno = parser.take().text
    note: str | None = None
    line.skip_ws()
    if line.text.startswith("(", line.pos):
        body = line.text[line.pos :].rstrip()
        if not body.endswith(")"):
            raise line.error("unterminated '(' note after the result")
        note = body[1:-1].strip()
        line.pos = len(line.text)
    line.expect_end("the system call")
    return SyscallEvent(name, args, result, errno, note)
