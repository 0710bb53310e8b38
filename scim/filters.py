"""SCIM filters (RFC 7644 §3.4.2.2): a bounded parser and a translator to SQLAlchemy expressions. Plain Python.

Why not scim2-filter-parser's SQL transpiler: it silently drops comparisons on attributes missing from its
attribute map (``foo eq "x"`` becomes "every user"), does not escape ``%``/``_`` in ``co``/``sw``/``ew``, produces a
SQL string to be spliced into ours, cannot express our multi-valued attributes (kept in a side table, see
``scim.models.ScimValue``) and gives ``and`` and ``or`` the same precedence (``a or b and c`` is parsed as
``(a or b) and c``; RFC 7644 binds ``and`` tighter). So this module parses filters itself — iteratively for
``and``/``or`` chains, recursively only for parentheses, with the depth, length and number of comparisons bounded —
and builds SQLAlchemy expressions with bound parameters only. Every attribute must resolve, or the filter is
refused with ``invalidFilter``; the caller always adds the workspace condition outside the parsed filter.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, exists, false, func, not_, or_, select, true
from sqlalchemy.orm import aliased

from scim.errors import InvalidFilter, InvalidPath
from scim.schemas import Attr, ResourceType, unstorable

MAX_FILTER_LENGTH = 2048
MAX_DEPTH = 8
MAX_COMPARISONS = 50
OPS = ("eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le", "pr")
LOGIC = ("and", "or", "not")


# ---- AST ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Path:
    attr: str
    sub: str | None = None
    uri: str | None = None

    def __str__(self) -> str:
        s = f"{self.uri}:" if self.uri else ""
        return s + self.attr + (f".{self.sub}" if self.sub else "")


@dataclass(frozen=True)
class Compare:
    path: Path
    op: str
    value: object = None


@dataclass(frozen=True)
class Logic:
    op: str  # "and" | "or"
    items: tuple


@dataclass(frozen=True)
class Not:
    expr: object


@dataclass(frozen=True)
class ValuePath:
    path: Path
    expr: object


# ---- tokenizer and parser ------------------------------------------------------------------------------------
_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<lp>\()|(?P<rp>\))|(?P<lb>\[)|(?P<rb>\])
      | (?P<str>"(?:[^"\\\x00-\x1f]|\\.)*")
      | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![\w.:$-])
      | (?P<word>[A-Za-z$][A-Za-z0-9_:.$-]*)
    )""",
    re.VERBOSE,
)
_ATTR_RE = re.compile(r"^[A-Za-z$][A-Za-z0-9_$-]*$")


def _tokenize(text: str) -> list[tuple[str, object]]:
    tokens: list[tuple[str, object]] = []
    pos, n = 0, len(text)
    while pos < n:
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise InvalidFilter(f"unexpected character at position {pos}")
        pos = m.end()
        kind = m.lastgroup
        raw = m.group(kind)
        if kind == "str":
            try:
                value = json.loads(raw)
            except ValueError:
                raise InvalidFilter("invalid string literal") from None
            if unstorable(value):  # "\u0000" and the like: no attribute holds one (PostgreSQL refuses NUL)
                raise InvalidFilter("a string value contains control characters or unpaired surrogates")
            tokens.append(("value", value))
        elif kind == "num":
            tokens.append(("value", json.loads(raw)))
        elif kind == "word":
            low = raw.lower()
            if low in ("true", "false"):
                tokens.append(("value", low == "true"))
            elif low == "null":
                tokens.append(("value", None))
            elif low in OPS or low in LOGIC:
                tokens.append(("kw", low))
            else:
                tokens.append(("path", raw))
        else:
            tokens.append((kind, raw))
    return tokens


def parse_path(raw: str, *, allow_uri: bool = True) -> Path:
    """``attr``, ``attr.sub``, ``urn:…:attr`` or ``urn:…:attr.sub``."""
    uri = None
    rest = raw
    if raw.lower().startswith("urn:"):
        if not allow_uri or ":" not in raw[4:]:
            raise InvalidFilter(f"invalid attribute path {raw[:100]!r}")
        uri, rest = raw.rsplit(":", 1)
    parts = rest.split(".")
    if len(parts) > 2 or not all(_ATTR_RE.match(p) for p in parts):
        raise InvalidFilter(f"invalid attribute path {raw[:100]!r}")
    return Path(parts[0], parts[1] if len(parts) == 2 else None, uri)


class _Parser:
    def __init__(self, tokens: list):
        self.t = tokens
        self.i = 0
        self.comparisons = 0

    def peek(self, offset: int = 0):
        j = self.i + offset
        return self.t[j] if j < len(self.t) else (None, None)

    def take(self, kind: str, value=None):
        k, v = self.peek()
        if k != kind or (value is not None and v != value):
            raise InvalidFilter(f"expected {value or kind} at token {self.i + 1}")
        self.i += 1
        return v

    def expr(self, depth: int, in_brackets: bool):
        if depth > MAX_DEPTH:
            raise InvalidFilter(f"filter nested deeper than {MAX_DEPTH} levels")
        items = [self.conj(depth, in_brackets)]
        while self.peek() == ("kw", "or"):
            self.i += 1
            items.append(self.conj(depth, in_brackets))
        return items[0] if len(items) == 1 else Logic("or", tuple(items))

    def conj(self, depth: int, in_brackets: bool):
        items = [self.unary(depth, in_brackets)]
        while self.peek() == ("kw", "and"):
            self.i += 1
            items.append(self.unary(depth, in_brackets))
        return items[0] if len(items) == 1 else Logic("and", tuple(items))

    def unary(self, depth: int, in_brackets: bool):
        k, v = self.peek()
        if (k, v) == ("kw", "not"):
            self.i += 1
            self.take("lp")
            inner = self.expr(depth + 1, in_brackets)
            self.take("rp")
            return Not(inner)
        if k == "lp":
            self.i += 1
            inner = self.expr(depth + 1, in_brackets)
            self.take("rp")
            return inner
        if k != "path":
            raise InvalidFilter(f"expected an attribute at token {self.i + 1}")
        self.i += 1
        path = parse_path(v, allow_uri=not in_brackets)
        if in_brackets and path.sub:
            raise InvalidFilter("a value filter names sub-attributes without a dot")
        if self.peek()[0] == "lb":
            if in_brackets:
                raise InvalidFilter("value filters cannot be nested")
            if path.sub:
                raise InvalidFilter("a value filter applies to a multi-valued attribute, not a sub-attribute")
            self.i += 1
            inner = self.expr(depth + 1, True)
            self.take("rb")
            return ValuePath(path, inner)
        kind, op = self.peek()
        if kind != "kw" or op not in OPS:
            raise InvalidFilter(f"expected a comparison operator after {str(path)[:100]!r}")
        self.i += 1
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise InvalidFilter(f"more than {MAX_COMPARISONS} comparisons")
        if op == "pr":
            return Compare(path, "pr")
        vk, value = self.peek()
        if vk != "value":
            raise InvalidFilter(f"expected a value after {op!r}")
        self.i += 1
        return Compare(path, op, value)


def parse_filter(text: str):
    if not isinstance(text, str) or not text.strip():
        raise InvalidFilter("empty filter")
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidFilter(f"filter longer than {MAX_FILTER_LENGTH} characters")
    tokens = _tokenize(text)
    if len(tokens) > MAX_COMPARISONS * 6:
        raise InvalidFilter("filter too long")
    p = _Parser(tokens)
    node = p.expr(0, False)
    if p.i != len(tokens):
        raise InvalidFilter(f"unexpected token {p.i + 1}")
    return node


# ---- PATCH paths -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchPath:
    attr: str
    uri: str | None = None
    sub: str | None = None
    value_filter: object = None  # a parsed filter over the elements of a multi-valued attribute
    filter_sub: str | None = None  # attr[filter].sub


def parse_patch_path(raw) -> PatchPath:
    if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_FILTER_LENGTH:
        raise InvalidPath("'path' must be a non-empty string")
    raw = raw.strip()
    try:
        if "[" not in raw:
            p = parse_path(raw)
            return PatchPath(p.attr, p.uri, p.sub)
        start, end = raw.index("["), raw.rfind("]")
        if end < start:
            raise InvalidPath(f"invalid path {raw[:100]!r}")
        head = parse_path(raw[:start])
        if head.sub:
            raise InvalidPath(f"invalid path {raw[:100]!r}")
        tail = raw[end + 1:]
        filter_sub = None
        if tail:
            if not tail.startswith(".") or not _ATTR_RE.match(tail[1:]):
                raise InvalidPath(f"invalid path {raw[:100]!r}")
            filter_sub = tail[1:]
        node = _Parser(_tokenize(raw[start + 1:end]))
        expr = node.expr(1, True)
        if node.i != len(node.t):
            raise InvalidPath(f"invalid value filter in {raw[:100]!r}")
        return PatchPath(head.attr, head.uri, None, expr, filter_sub)
    except InvalidFilter as exc:
        raise InvalidPath(exc.detail) from None


# ---- in-memory evaluation (PATCH value filters over the elements of a multi-valued attribute) ------------
def _fold(s: str) -> str:
    return unicodedata.normalize("NFKC", s).casefold()


def matches(node, element: dict, attr: Attr) -> bool:
    if isinstance(node, Logic):
        results = (matches(n, element, attr) for n in node.items)
        return all(results) if node.op == "and" else any(results)
    if isinstance(node, Not):
        return not matches(node.expr, element, attr)
    if isinstance(node, ValuePath):
        raise InvalidPath("value filters cannot be nested")
    sub = attr.subattr(node.path.attr) if attr.type == "complex" else None
    if sub is None:
        raise InvalidPath(f"{attr.name} has no sub-attribute {node.path.attr[:100]!r}")
    have = element.get(sub.name)
    want = node.value
    if node.op == "pr":
        return have not in (None, "", [], {})
    if have is None:
        return node.op == "ne"
    if isinstance(have, bool) or isinstance(want, bool):
        if isinstance(want, str) and want.lower() in ("true", "false"):
            want = want.lower() == "true"
        if node.op == "eq":
            return have is want
        if node.op == "ne":
            return have is not want
        raise InvalidPath(f"operator {node.op!r} does not apply to a boolean")
    h, w = str(have), "" if want is None else str(want)
    if not sub.case_exact:
        h, w = _fold(h), _fold(w)
    return {
        "eq": h == w, "ne": h != w, "co": w in h, "sw": h.startswith(w), "ew": h.endswith(w),
        "gt": h > w, "lt": h < w, "ge": h >= w, "le": h <= w,
    }[node.op]


# ---- translation to SQLAlchemy --------------------------------------------------------------------------------
def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class Column:
    """A filterable attribute stored in a column: ``kind`` is string | folded | bool | datetime."""

    expr: object
    kind: str = "string"
    case_exact: bool = False


def parse_datetime(value) -> datetime:
    if not isinstance(value, str):
        raise InvalidFilter("a dateTime is compared with a string")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidFilter("invalid dateTime value") from None
    if dt.tzinfo is None:
        raise InvalidFilter("a dateTime value needs a time zone")
    return dt


def _string_value(value, op: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        raise InvalidFilter(f"operator {op!r} needs a string value here")
    value = str(value)
    if len(value) > 1024:
        raise InvalidFilter("comparison value too long")
    return value


def compare_column(col: Column, op: str, value):
    """One comparison on a column, with bound parameters only."""
    e = col.expr
    if op == "pr":
        if col.kind in ("string", "folded"):
            return and_(e.is_not(None), e != "")
        return e.is_not(None)
    if col.kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise InvalidFilter("a boolean attribute is compared with true or false")
        if op == "eq":
            return e.is_(true()) if value else or_(e.is_(false()), e.is_(None))
        if op == "ne":
            return or_(e.is_(false()), e.is_(None)) if value else e.is_(true())
        raise InvalidFilter(f"operator {op!r} does not apply to a boolean")
    if col.kind == "datetime":
        dt = parse_datetime(value)
        ops = {"eq": e == dt, "ne": e != dt, "gt": e > dt, "lt": e < dt, "ge": e >= dt, "le": e <= dt}
        if op not in ops:
            raise InvalidFilter(f"operator {op!r} does not apply to a dateTime")
        return ops[op]
    if value is None and op in ("eq", "ne"):
        return or_(e.is_(None), e == "") if op == "eq" else and_(e.is_not(None), e != "")
    v = _string_value(value, op)
    if col.kind == "folded":
        v = _fold(v)
    elif not col.case_exact:
        e, v = func.lower(e), v.lower()
    if op == "eq":
        return e == v
    if op == "ne":
        return or_(col.expr.is_(None), e != v)
    if op in ("co", "sw", "ew"):
        pattern = escape_like(v)
        pattern = {"co": f"%{pattern}%", "sw": f"{pattern}%", "ew": f"%{pattern}"}[op]
        cond = e.like(pattern, escape="\\")
        if col.case_exact and v:
            # LIKE ignores the case of ASCII letters on SQLite (PRAGMA case_sensitive_like is deprecated and
            # per connection): a case-exact attribute also needs the exact substring, with functions that
            # SQLite and PostgreSQL both have and that compare code points on both.
            n = len(v)
            exact = {"co": func.replace(e, v, "") != e, "sw": func.substr(e, 1, n) == v,
                     "ew": func.substr(e, func.length(e) - (n - 1)) == v}[op]
            cond = and_(cond, exact)
        return cond
    return {"gt": e > v, "lt": e < v, "ge": e >= v, "le": e <= v}[op]


def compare_constant(text: str, op: str, value, case_exact: bool = False):
    """A comparison on an attribute that has the same value for every resource of a type (``meta.resourceType``),
    decided here: ``true()`` or ``false()``, with the semantics of ``compare_column``."""
    if op == "pr":
        return true() if text else false()
    if value is None and op in ("eq", "ne"):
        return true() if (op == "eq") == (text == "") else false()
    v = _string_value(value, op)
    h = text
    if not case_exact:
        h, v = _fold(h), _fold(v)
    result = {"eq": h == v, "ne": h != v, "co": v in h, "sw": h.startswith(v), "ew": h.endswith(v),
              "gt": h > v, "lt": h < v, "ge": h >= v, "le": h <= v}[op]
    return true() if result else false()


@dataclass(frozen=True)
class Relation:
    """A multi-valued complex attribute kept in other tables (a user's ``groups``, a group's ``members``).

    ``rows(subs)`` returns a SELECT of the resource's elements, correlated to the resource and with fresh aliases
    (one row per element), and ``{sub-attribute key: Column}`` with at least the keys in ``subs``. A value filter
    (``groups[value eq "…" and display sw "…"]``) is one EXISTS over it, so that every comparison of the filter
    applies to the same element."""

    rows: Callable[[set[str]], tuple[Select, dict[str, Column]]]


class UnknownAttribute(InvalidFilter):
    """A filter names an attribute that the resource type's schemas do not have."""


class Translator:
    """Turns a parsed filter into a SQLAlchemy condition on one resource type.

    ``columns`` maps lower-cased attribute paths (``username``, ``name.givenname``, ``meta.created``) to a
    ``Column``; ``index`` is the ScimValue model (multi-valued and other attributes, one row per element and
    sub-attribute) with ``owner`` the resource's id column; ``special`` maps paths to callables
    ``(op, value) -> condition`` (``meta.resourcetype``, ``meta.location``); ``relations`` maps multi-valued
    attributes kept in other tables (``groups``, ``members``) to a ``Relation``. Unknown attributes raise
    ``InvalidFilter``."""

    def __init__(self, rt: ResourceType, columns: dict[str, Column], owner, index=None, special=None,
                 relations: dict[str, Relation] | None = None, forbidden: tuple[str, ...] = ("password",)):
        self.rt = rt
        self.columns = columns
        self.owner = owner
        self.index = index
        self.special = special or {}
        self.relations = relations or {}
        self.forbidden = forbidden
        # None: an unknown attribute is invalidFilter. A set (the root /.search, across resource types): a
        # comparison on an attribute this type lacks is false for its resources, and the path is added here.
        self.unknown: set[str] | None = None

    # -- resolution
    def _resolve(self, path: Path) -> tuple[str, Attr, Attr | None]:
        """(index attr name, attribute, sub-attribute) of a path, checked against the schema."""
        if path.uri:
            uri = self.rt.ext_uri(path.uri)
            if uri is None and path.uri.lower() != self.rt.schema.lower():
                raise UnknownAttribute(f"unknown schema in {str(path)[:100]!r}")
            if uri:
                attr = next((a for a in self.rt.extensions[uri] if a.key == path.attr.lower()), None)
                name = f"{uri}:{attr.name}" if attr else ""
            else:
                attr = self.rt.attr(path.attr)
                name = attr.name if attr else ""
        else:
            attr = self.rt.attr(path.attr)
            name = attr.name if attr else ""
            if attr is None:
                for uri, attrs in self.rt.extensions.items():
                    attr = next((a for a in attrs if a.key == path.attr.lower()), None)
                    if attr:
                        name = f"{uri}:{attr.name}"
                        break
        if attr is None:
            raise UnknownAttribute(f"unknown attribute {str(path)[:100]!r}")
        if attr.key in self.forbidden or attr.returned == "never" or attr.mutability == "writeOnly":
            raise InvalidFilter(f"{attr.name} cannot be used in a filter")
        sub = None
        if path.sub:
            sub = attr.subattr(path.sub)
            if sub is None:
                raise InvalidFilter(f"unknown attribute {str(path)[:100]!r}")
        return name, attr, sub

    def _key(self, name: str, sub: Attr | None) -> str:
        return (name + (f".{sub.name}" if sub else "")).lower()

    # -- translation
    def condition(self, node):
        if isinstance(node, Logic):
            parts = [self.condition(n) for n in node.items]
            return and_(*parts) if node.op == "and" else or_(*parts)
        if isinstance(node, Not):
            return not_(self.condition(node.expr))
        if isinstance(node, ValuePath):
            return self._value_path(node)
        return self._compare(node)

    def _resolve_or_absent(self, path: Path):
        try:
            return self._resolve(path)
        except UnknownAttribute:
            if self.unknown is None:
                raise
            self.unknown.add(str(path).lower())
            return None

    def _compare(self, node: Compare):
        found = self._resolve_or_absent(node.path)
        if found is None:
            return false()
        name, attr, sub = found
        relation = self.relations.get(name.lower())
        if relation is not None:
            return self._relation_compare(relation, attr, sub, node.op, node.value)
        key = self._key(name, sub)
        if attr.type == "complex" and sub is None:
            if node.op == "pr" and not (attr.multi and attr.subattr("value")):
                return self._complex_present(name, attr)  # name pr, addresses pr, meta pr
            sub = attr.subattr("value")
            if sub is None or not attr.multi:
                raise InvalidFilter(f"name a sub-attribute of {attr.name} (e.g. {attr.name}.{attr.sub[0].name})")
            key = self._key(name, sub)
        if key in self.special:
            return self.special[key](node.op, node.value)
        if key in self.columns:
            return compare_column(self.columns[key], node.op, node.value)
        if self.index is None or attr.mutability == "readOnly":
            raise InvalidFilter(f"{str(node.path)[:100]} cannot be used in a filter")
        row = aliased(self.index)
        cond = self._row_compare(row, sub or attr, node.op, node.value)
        base = [row.owner_id == self.owner, row.attr == name, row.sub == (sub.name if sub else "")]
        if node.op == "ne":  # "not equal" also matches resources without the attribute
            positive = self._row_compare(row, sub or attr, "eq", node.value)
            return not_(exists(select(row.owner_id).where(*base, positive)))
        return exists(select(row.owner_id).where(*base, cond))

    def _complex_present(self, name: str, attr: Attr):
        """``pr`` on a complex attribute (RFC 7644 §3.4.2.2: "a non-empty node"): any of its sub-attributes."""
        parts = []
        for s in attr.sub:
            key = self._key(name, s)
            if key in self.special:
                parts.append(self.special[key]("pr", None))
            elif key in self.columns:
                parts.append(compare_column(self.columns[key], "pr", None))
        if self.index is not None and attr.mutability != "readOnly":  # the sub-attributes kept in the index
            row = aliased(self.index)
            parts.append(exists(select(row.owner_id).where(row.owner_id == self.owner, row.attr == name,
                                                           row.value.is_not(None), row.value != "")))
        if not parts:
            raise InvalidFilter(f"{attr.name} cannot be used in a filter")
        return or_(*parts)

    def _row_compare(self, row, attr: Attr, op: str, value):
        if attr.type == "boolean":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if not isinstance(value, bool) or op not in ("eq", "ne", "pr"):
                raise InvalidFilter(f"{attr.name} is compared with true or false (eq, ne or pr)")
            return row.value.is_not(None) if op == "pr" else row.value == ("true" if value else "false")
        col = Column(row.value if attr.case_exact else row.folded, "string" if attr.case_exact else "folded",
                     attr.case_exact)
        if attr.type == "dateTime" and op not in ("pr",):
            parse_datetime(value)
        return compare_column(col, op, value)

    def _value_path(self, node: ValuePath):
        found = self._resolve_or_absent(node.path)
        if found is None:
            return false()
        name, attr, sub = found
        if attr.type != "complex" or sub is not None:
            raise InvalidFilter(f"{attr.name} is not a complex attribute")
        relation = self.relations.get(name.lower())
        if relation is not None:
            subs = {self._element_sub(attr, leaf).key for leaf in _leaves(node.expr)}
            rows, cols = relation.rows(subs)
            return exists(rows.where(self._relation_element(attr, cols, node.expr)))
        if self.index is None or attr.mutability == "readOnly":
            raise InvalidFilter(f"{attr.name} cannot be used in a filter")
        elem = aliased(self.index)
        inner = self._element_condition(elem, name, attr, node.expr)
        return exists(select(elem.owner_id).where(elem.owner_id == self.owner, elem.attr == name, inner))

    @staticmethod
    def _element_sub(attr: Attr, node: Compare) -> Attr:
        sub = attr.subattr(node.path.attr)
        if sub is None or node.path.uri or node.path.sub:
            raise InvalidFilter(f"{attr.name} has no sub-attribute {node.path.attr[:100]!r}")
        return sub

    def _element_condition(self, elem, name: str, attr: Attr, node):
        if isinstance(node, Logic):
            parts = [self._element_condition(elem, name, attr, n) for n in node.items]
            return and_(*parts) if node.op == "and" else or_(*parts)
        if isinstance(node, Not):
            return not_(self._element_condition(elem, name, attr, node.expr))
        if isinstance(node, ValuePath):
            raise InvalidFilter("value filters cannot be nested")
        sub = self._element_sub(attr, node)
        row = aliased(self.index)
        base = [row.owner_id == elem.owner_id, row.attr == name, row.idx == elem.idx, row.sub == sub.name]
        if node.op == "ne":
            return not_(exists(select(row.owner_id).where(*base, self._row_compare(row, sub, "eq", node.value))))
        return exists(select(row.owner_id).where(*base, self._row_compare(row, sub, node.op, node.value)))

    # -- attributes kept in other tables (groups, members)
    def _relation_compare(self, relation: Relation, attr: Attr, sub: Attr | None, op: str, value):
        if sub is None:
            if op == "pr":  # has at least one element
                rows, _cols = relation.rows(set())
                return exists(rows)
            sub = attr.subattr("value")
        rows, cols = relation.rows({sub.key})
        col = cols.get(sub.key)
        if col is None:
            raise InvalidFilter(f"{attr.name}.{sub.name} cannot be used in a filter")
        if op == "ne":  # as for the index: "not equal" also matches resources without such an element
            return not_(exists(rows.where(compare_column(col, "eq", value))))
        return exists(rows.where(compare_column(col, op, value)))

    def _relation_element(self, attr: Attr, cols: dict[str, Column], node):
        """The condition on one element's columns (inside the relation's EXISTS)."""
        if isinstance(node, Logic):
            parts = [self._relation_element(attr, cols, n) for n in node.items]
            return and_(*parts) if node.op == "and" else or_(*parts)
        if isinstance(node, Not):
            return not_(self._relation_element(attr, cols, node.expr))
        sub = self._element_sub(attr, node)
        col = cols.get(sub.key)
        if col is None:
            raise InvalidFilter(f"{attr.name}.{sub.name} cannot be used in a filter")
        return compare_column(col, node.op, node.value)

    def order_column(self, raw: str):
        """The column to sort by (``sortBy``), or ``InvalidValue``-worthy ``None`` if not sortable."""
        try:
            path = parse_path(raw)
            name, attr, sub = self._resolve(path)
        except InvalidFilter:
            return None
        if attr.type == "complex" and sub is None and attr.subattr("value") is not None:
            sub = attr.subattr("value")
        col = self.columns.get(self._key(name, sub))
        return col.expr if col is not None else None


def _leaves(node):
    """The comparisons of a value filter's expression (nested value filters refused)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Logic):
            stack.extend(n.items)
        elif isinstance(n, Not):
            stack.append(n.expr)
        elif isinstance(n, ValuePath):
            raise InvalidFilter("value filters cannot be nested")
        else:
            yield n
