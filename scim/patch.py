"""SCIM PATCH (RFC 7644 §3.5.2) applied to a resource held as a plain dict. Plain Python.

The resource is the cleaned form (``scim.schemas.clean_resource``): canonical attribute names, extension
attributes under their schema URI. The result is cleaned again by the caller, so values a client sends in a
lenient form (Azure AD's ``"True"``) are normalised once, in one place."""

from __future__ import annotations

import copy

from scim.errors import InvalidPath, InvalidSyntax, InvalidValue, Mutability, NoTarget
from scim.filters import Compare, Logic, matches, parse_patch_path
from scim.schemas import Attr, ResourceType

MAX_OPERATIONS = 1000


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _creatable(node) -> dict | None:
    """``type eq "work"`` (or an ``and`` of such equalities) → the element it describes, so that Azure AD's
    ``Add emails[type eq "work"].value`` creates the work address when there is none; else None."""
    if isinstance(node, Compare) and node.op == "eq" and node.path.uri is None and node.path.sub is None:
        return {node.path.attr: node.value}
    if isinstance(node, Logic) and node.op == "and":
        out: dict = {}
        for n in node.items:
            part = _creatable(n)
            if part is None:
                return None
            out.update(part)
        return out
    return None


def _canon_element(attr: Attr, element: dict) -> dict:
    out = {}
    for k, v in element.items():
        sub = attr.subattr(k) if isinstance(k, str) else None
        out[sub.name if sub else k] = v
    return out


class Patcher:
    def __init__(self, rt: ResourceType, doc: dict):
        self.rt = rt
        self.doc = copy.deepcopy(doc)
        self.touched: set[str] = set()

    # ---- entry point
    def apply(self, body: dict) -> dict:
        ops = body.get("Operations", body.get("operations"))
        if not isinstance(ops, list) or not ops:
            raise InvalidSyntax("'Operations' must be a non-empty list")
        if len(ops) > MAX_OPERATIONS:
            raise InvalidValue(f"at most {MAX_OPERATIONS} operations per request")
        for i, op in enumerate(ops):
            if not isinstance(op, dict):
                raise InvalidSyntax(f"Operations[{i}] must be an object")
            name = op.get("op")
            if not isinstance(name, str) or name.lower() not in ("add", "replace", "remove"):
                raise InvalidSyntax(f"Operations[{i}].op must be add, replace or remove")
            self.operation(name.lower(), op.get("path"), op.get("value"), "value" in op)
        return self.doc

    def operation(self, op: str, path, value, has_value: bool) -> None:
        if path is None or (isinstance(path, str) and not path.strip()):
            if op == "remove":
                raise NoTarget("'remove' needs a path")
            if not isinstance(value, dict):
                raise InvalidValue("without a path, 'value' must be an object of attributes")
            for k, v in value.items():
                if not isinstance(k, str) or k.lower() == "schemas":
                    continue
                uri = self.rt.ext_uri(k)
                if uri is not None and isinstance(v, dict):
                    for ek, ev in v.items():
                        self.operation(op, f"{uri}:{ek}", ev, True)
                else:
                    self.operation(op, k, v, True)
            return
        if not isinstance(path, str):
            raise InvalidPath("'path' must be a string")
        uri = self.rt.ext_uri(path.strip())
        if uri is not None:  # the whole extension
            if op == "remove":
                self.doc.pop(uri, None)
                self.touched.add(uri)
                return
            if not isinstance(value, dict):
                raise InvalidValue(f"{uri}: 'value' must be an object")
            for ek, ev in value.items():
                if isinstance(ek, str) and ek.lower() != "schemas":
                    self.operation(op, f"{uri}:{ek}", ev, True)
            return
        if op != "remove" and not has_value:
            raise InvalidValue(f"'{op}' needs a value")
        self._apply(op, parse_patch_path(path), value)

    # ---- one operation on one path
    def _resolve(self, pp) -> tuple[dict, Attr, str]:
        if pp.uri is not None:
            uri = self.rt.ext_uri(pp.uri)
            if uri is not None:
                attr = next((a for a in self.rt.extensions[uri] if a.key == pp.attr.lower()), None)
                if attr is None:
                    raise InvalidPath(f"unknown attribute {pp.attr[:100]!r} in {uri}")
                return self.doc.setdefault(uri, {}), attr, f"{uri}:{attr.name}"
            if pp.uri.lower() != self.rt.schema.lower():
                raise InvalidPath(f"unknown schema {pp.uri[:100]!r}")
        attr = self.rt.attr(pp.attr)
        if attr is None:
            raise InvalidPath(f"unknown attribute {pp.attr[:100]!r}")
        return self.doc, attr, attr.name

    def _apply(self, op: str, pp, value) -> None:
        container, attr, label = self._resolve(pp)
        if attr.mutability == "readOnly" or attr.name == "id":
            raise Mutability(f"{attr.name} is read-only")
        sub_name = pp.sub or pp.filter_sub
        sub = None
        if sub_name:
            sub = attr.subattr(sub_name) if attr.type == "complex" else None
            if sub is None:
                raise InvalidPath(f"{attr.name} has no sub-attribute {sub_name[:100]!r}")
            if sub.mutability == "readOnly":
                raise Mutability(f"{attr.name}.{sub.name} is read-only")
        if op == "remove" and attr.required and sub is None and pp.value_filter is None:
            raise InvalidValue(f"{attr.name} is required and cannot be removed")
        self.touched.add(label)
        key = attr.name
        if pp.value_filter is not None:
            if not (attr.multi and attr.type == "complex"):
                raise InvalidPath(f"{attr.name} is not a multi-valued complex attribute")
            self._filtered(container, attr, sub, pp.value_filter, op, value)
            return
        if sub is not None:
            self._sub(container, attr, sub, op, value)
            return
        if op == "remove":
            if attr.multi and value is not None:  # Azure AD: remove members listed in value
                gone = {str(v.get("value")) for v in _as_list(value) if isinstance(v, dict)}
                container[key] = [e for e in _as_list(container.get(key))
                                  if not (isinstance(e, dict) and str(e.get("value")) in gone)]
            else:
                container.pop(key, None)
            return
        if attr.multi:
            items = [_canon_element(attr, v) if isinstance(v, dict) else v for v in _as_list(value)]
            if op == "add":
                existing = _as_list(container.get(key))
                container[key] = existing + [v for v in items if v not in existing]
            else:
                container[key] = items
            return
        if attr.type == "complex":
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, str):  # a manager given as its id
                value = {"value": value}
            if not isinstance(value, dict):
                raise InvalidValue(f"{attr.name}: 'value' must be an object")
            merged = dict(container.get(key) or {}) if isinstance(container.get(key), dict) else {}
            merged.update(_canon_element(attr, value))
            container[key] = merged
            return
        container[key] = value

    def _sub(self, container: dict, attr: Attr, sub: Attr, op: str, value) -> None:
        key = attr.name
        if attr.multi:  # emails.value without a filter: every element
            elements = [e for e in _as_list(container.get(key)) if isinstance(e, dict)]
            if not elements and op != "remove":
                container[key] = [{sub.name: value}]
                return
            for e in elements:
                if op == "remove":
                    e.pop(sub.name, None)
                else:
                    e[sub.name] = value
            container[key] = elements
            return
        current = container.get(key) if isinstance(container.get(key), dict) else {}
        current = dict(current)
        if op == "remove":
            current.pop(sub.name, None)
        else:
            current[sub.name] = value
        if current:
            container[key] = current
        else:
            container.pop(key, None)

    def _filtered(self, container: dict, attr: Attr, sub: Attr | None, node, op: str, value) -> None:
        key = attr.name
        elements = [e for e in _as_list(container.get(key)) if isinstance(e, dict)]
        hits = [e for e in elements if matches(node, e, attr)]
        if op == "remove":
            if sub is None:
                container[key] = [e for e in elements if not any(e is h for h in hits)]
            else:
                for e in hits:
                    e.pop(sub.name, None)
            return
        if not hits:
            base = _creatable(node)
            if base is None:
                raise NoTarget("the value filter matches no value")
            base = _canon_element(attr, base)
            if sub is not None:
                base[sub.name] = value
            elif isinstance(value, dict):
                base.update(_canon_element(attr, value))
            else:
                raise InvalidValue(f"{attr.name}: 'value' must be an object")
            container[key] = elements + [base]
            return
        for e in hits:
            if sub is not None:
                e[sub.name] = value
            else:
                if not isinstance(value, dict):
                    raise InvalidValue(f"{attr.name}: 'value' must be an object")
                if op == "replace":
                    e.clear()
                e.update(_canon_element(attr, value))
        container[key] = elements
