"""SOQL: safe literal quoting for clients, and a small parser/evaluator for the local server.

``soql_quote`` is what every churnflow query uses for values, so an email or key with a
quote or backslash can never change a query. The parser understands the subset of SOQL
churnflow and its tests use, and rejects everything else with Salesforce's error codes
(a local server that accepts more than Salesforce would hide bugs until production).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_UNESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "_": "\\_", "%": "\\%"}


def soql_escape(value: str) -> str:
    """Escape a string for use inside a SOQL quoted literal (Salesforce's escape sequences)."""
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def soql_quote(value: Any) -> str:
    """A SOQL literal for ``value``: quoted and escaped strings, bare numbers/booleans, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + soql_escape(str(value)) + "'"


def soql_in(values: list[Any]) -> str:
    """``('a', 'b')`` for an IN clause."""
    return "(" + ", ".join(soql_quote(v) for v in values) + ")"


class SoqlError(Exception):
    """A query Salesforce would reject; ``code`` is Salesforce's errorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<number>-?\d+(?:\.\d+)?(?![\w:-]))
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<word>[A-Za-z_][\w.]*)
    """,
    re.VERBOSE,
)

KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC",
            "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "NULL", "TRUE", "FALSE", "COUNT"}


@dataclass
class Token:
    kind: str
    text: str
    value: Any = None


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _UNESCAPES:
                raise SoqlError("MALFORMED_QUERY", f"Invalid string literal '{body}'. Illegal character sequence '\\{body[i + 1:i + 2]}' in string literal.")
            out.append(_UNESCAPES[body[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{text[pos:pos + 20]}'")
        pos = m.end()
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "ws":
            continue
        if kind == "string":
            tokens.append(Token("string", raw, _unescape(raw[1:-1])))
        elif kind == "number":
            tokens.append(Token("number", raw, float(raw)))
        elif kind == "word" and raw.upper() in KEYWORDS:
            tokens.append(Token("kw", raw.upper()))
        else:
            tokens.append(Token(kind, raw, raw))
    return tokens


@dataclass
class Cond:
    field: str
    op: str
    value: Any  # a literal, or a list of literals for IN / NOT IN


@dataclass
class BoolOp:
    op: str  # AND, OR, NOT
    items: list[Any]


@dataclass
class Query:
    fields: list[str]
    sobject: str
    where: Any = None
    order_by: list[tuple[str, bool, bool | None]] = field(default_factory=list)  # (field, descending, nulls_last)
    limit: int | None = None
    offset: int = 0
    count_only: bool = False


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise SoqlError("MALFORMED_QUERY", "unexpected end of query")
        self.i += 1
        return tok

    def is_kw(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "kw" and tok.text in words

    def expect_kw(self, word: str) -> None:
        tok = self.take()
        if tok.kind != "kw" or tok.text != word:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tok.text}' (expecting {word})")

    def expect_punct(self, ch: str) -> None:
        tok = self.take()
        if tok.text != ch:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tok.text}' (expecting '{ch}')")

    def ident(self) -> str:
        tok = self.take()
        if tok.kind != "word":
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tok.text}'")
        return tok.text

    def parse(self) -> Query:
        self.expect_kw("SELECT")
        fields: list[str] = []
        count_only = False
        if self.is_kw("COUNT"):
            self.take()
            self.expect_punct("(")
            self.expect_punct(")")
            count_only = True
        else:
            fields.append(self.ident())
            while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.take()
                fields.append(self.ident())
        self.expect_kw("FROM")
        query = Query(fields=fields, sobject=self.ident(), count_only=count_only)
        if self.is_kw("WHERE"):
            self.take()
            query.where = self.expr()
        if self.is_kw("ORDER"):
            self.take()
            self.expect_kw("BY")
            while True:
                name = self.ident()
                desc = False
                nulls_last: bool | None = None
                if self.is_kw("ASC", "DESC"):
                    desc = self.take().text == "DESC"
                if self.is_kw("NULLS"):
                    self.take()
                    nulls_last = self.take().text == "LAST"
                query.order_by.append((name, desc, nulls_last))
                if self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                    self.take()
                    continue
                break
        if self.is_kw("LIMIT"):
            self.take()
            tok = self.take()
            if tok.kind != "number" or tok.value < 0 or tok.value != int(tok.value):
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tok.text}'")
            query.limit = int(tok.value)
        if self.is_kw("OFFSET"):
            self.take()
            tok = self.take()
            if tok.kind != "number":
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tok.text}'")
            query.offset = int(tok.value)
        if self.peek() is not None:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{self.peek().text}'")  # type: ignore[union-attr]
        return query

    def expr(self) -> Any:
        """A condition list joined by one kind of operator: SOQL forbids mixing AND/OR without parentheses."""
        items = [self.term()]
        joiner: str | None = None
        while self.is_kw("AND", "OR"):
            op = self.take().text
            if joiner is not None and op != joiner:
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{op}' (mixing AND and OR needs parentheses)")
            joiner = op
            items.append(self.term())
        return items[0] if joiner is None else BoolOp(joiner, items)

    def term(self) -> Any:
        if self.is_kw("NOT"):
            self.take()
            return BoolOp("NOT", [self.term()])
        tok = self.peek()
        if tok is not None and tok.text == "(":
            self.take()
            inner = self.expr()
            self.expect_punct(")")
            return inner
        name = self.ident()
        if self.is_kw("NOT"):
            self.take()
            self.expect_kw("IN")
            return Cond(name, "NOT IN", self.value_list())
        if self.is_kw("IN"):
            self.take()
            return Cond(name, "IN", self.value_list())
        if self.is_kw("LIKE"):
            self.take()
            tok = self.take()
            if tok.kind != "string":
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tok.text}'")
            return Cond(name, "LIKE", tok.value)
        tok = self.take()
        if tok.kind != "op":
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tok.text}'")
        op = "!=" if tok.text == "<>" else tok.text
        return Cond(name, op, self.literal())

    def value_list(self) -> list[Any]:
        self.expect_punct("(")
        values = [self.literal()]
        while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
            self.take()
            values.append(self.literal())
        self.expect_punct(")")
        return values

    def literal(self) -> Any:
        tok = self.take()
        if tok.kind in ("string", "number", "date", "datetime"):
            return SoqlLiteral(tok.kind, tok.value)
        if tok.kind == "kw" and tok.text in ("NULL", "TRUE", "FALSE"):
            return SoqlLiteral("null" if tok.text == "NULL" else "bool", None if tok.text == "NULL" else tok.text == "TRUE")
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tok.text}'")


@dataclass(frozen=True)
class SoqlLiteral:
    kind: str
    value: Any


def parse(text: str) -> Query:
    """Parse a SOQL query, raising :class:`SoqlError` (MALFORMED_QUERY) on anything unsupported."""
    return _Parser(text).parse()


def like_to_regex(pattern: str) -> re.Pattern[str]:
    """SOQL LIKE: ``%`` any run, ``_`` one character, ``\\%``/``\\_`` literal; case-insensitive."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "%_":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE | re.DOTALL)
