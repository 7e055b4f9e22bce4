"""The part of Go's text/template that users script Docker with: ``--format`` / ``-f`` strings.

Supported: field paths (``.State.Status``, ``.``), ``$`` for the top value, pipelines with ``|``, string,
number and boolean literals, ``range``/``if``/``with`` with ``else`` and ``end``, and the functions
Docker's CLI adds: ``json``, ``index``, ``join``, ``split``, ``upper``, ``lower``, ``title``, ``len``,
``printf``, ``print``, ``println``, ``truncate``, ``pad``. Values are the JSON-shaped dicts and lists hutch
prints for ``inspect``, so a field is a dict key, as in Docker's Go structs.

Errors are one line naming the template: a typo must not print half a table.
"""

from __future__ import annotations

import json
import re

from hutch.errors import InvalidArgument

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(`[^`]*`)|(\|)|(\$[\w.]*)|(\.[\w.]*)|([\w.+-]+))')


class TemplateError(InvalidArgument):
    pass


_DECLARE = re.compile(r"\s*(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=")


class _Node:
    __slots__ = ("kind", "pipe", "body", "alt", "text", "names")

    def __init__(self, kind: str, pipe=None, text: str = "", names: tuple = ()) -> None:
        self.kind, self.pipe, self.text, self.names = kind, pipe, text, names
        self.body: list[_Node] = []
        self.alt: list[_Node] = []


class Template:
    """A parsed template; ``render(value)`` gives the text."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = _parse(source)

    def render(self, value) -> str:
        out: list[str] = []
        _execute(self.nodes, value, {"$": value}, out, self.source)
        return "".join(out)


def _parse(source: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Node | None, list[_Node]]] = [(None, root)]
    pos = 0
    pending_trim = False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if pending_trim:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        if text:
            stack[-1][1].append(_Node("text", text=text))
        pending_trim = bool(match.group(3))
        pos = match.end()
        action = match.group(2)
        if action.startswith("/*"):
            continue
        word = action.split(None, 1)[0] if action else ""
        if word in ("range", "if", "with"):
            rest = action[len(word) :]
            declared = _DECLARE.match(rest)
            names = tuple(n for n in declared.groups() if n) if declared else ()
            node = _Node(word, _pipeline(rest[declared.end() :] if declared else rest, source), names=names)
            stack[-1][1].append(node)
            stack.append((node, node.body))
        elif word == "else":
            owner = stack[-1][0]
            if owner is None:
                raise TemplateError(f"template {source!r}: unexpected {{{{else}}}}")
            rest = action[4:].strip()
            if rest.startswith("if "):  # else if: a nested if in the else branch, closed by the same end
                nested = _Node("if", _pipeline(rest[2:], source))
                nested.kind = "elseif"
                owner.alt.append(nested)
                stack[-1] = (owner, owner.alt)
                stack.append((nested, nested.body))
            else:
                stack[-1] = (owner, owner.alt)
        elif word == "end":
            if len(stack) == 1:
                raise TemplateError(f"template {source!r}: unexpected {{{{end}}}}")
            while stack[-1][0] is not None and stack[-1][0].kind == "elseif":
                stack.pop()
            stack.pop()
        else:
            stack[-1][1].append(_Node("action", _pipeline(action, source)))
    tail = source[pos:]
    if pending_trim:
        tail = tail.lstrip()
    if tail:
        root.append(_Node("text", text=tail))
    if len(stack) != 1:
        raise TemplateError(f"template {source!r}: missing {{{{end}}}}")
    return root


def _pipeline(text: str, source: str) -> list[list]:
    """``cmd | cmd ...`` -> list of commands, each a list of (kind, value) operands."""
    commands: list[list] = [[]]
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise TemplateError(f"template {source!r}: cannot parse {text[pos:]!r}")
        pos = match.end()
        string, raw, pipe, var, field, word = match.groups()
        if pipe:
            commands.append([])
        elif string:
            commands[-1].append(("lit", json.loads(string)))
        elif raw:
            commands[-1].append(("lit", raw[1:-1]))
        elif var:
            commands[-1].append(("var", var))
        elif field:
            commands[-1].append(("field", field))
        elif word in ("true", "false"):
            commands[-1].append(("lit", word == "true"))
        elif re.fullmatch(r"-?\d+", word):
            commands[-1].append(("lit", int(word)))
        elif word in _FUNCS:
            commands[-1].append(("func", word))
        else:
            raise TemplateError(f'template {source!r}: function "{word}" not defined')
    if any(not c for c in commands):
        raise TemplateError(f"template {source!r}: missing command in pipeline")
    return commands


def _field(value, path: str, source: str):
    for name in (p for p in path.split(".") if p):
        if isinstance(value, dict):
            if name not in value:
                raise TemplateError(f"template {source!r}: can't evaluate field {name}")
            value = value[name]
        elif value is None:
            return None
        else:
            raise TemplateError(f"template {source!r}: can't evaluate field {name} in {type(value).__name__}")
    return value


def _operand(operand, dot, top, source: str):
    kind, value = operand
    if kind == "lit":
        return value
    if kind == "field":
        return _field(dot, value, source)
    if kind == "var":
        name, _, path = value.partition(".")
        if name == "$":
            return _field(top["$"], path, source)
        if name not in top:
            raise TemplateError(f'template {source!r}: undefined variable "{name}"')
        return _field(top[name], path, source)
    return _call(value, [], source)


def _run(pipe: list[list], dot, top, source: str):
    result = _MISSING
    for command in pipe:
        head = command[0]
        args = [_operand(op, dot, top, source) for op in command[1:]]
        if result is not _MISSING:
            args.append(result)
        if head[0] == "func":
            result = _call(head[1], args, source)
        elif args:
            raise TemplateError(f"template {source!r}: can't give arguments to a non-function")
        else:
            result = _operand(head, dot, top, source)
    return result


def _truthy(value) -> bool:
    return bool(value) if value is not None else False


def _execute(nodes: list[_Node], dot, top, out: list[str], source: str) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "action":
            out.append(_text(_run(node.pipe, dot, top, source)))
        elif node.kind in ("if", "elseif"):
            if _truthy(_run(node.pipe, dot, top, source)):
                _execute(node.body, dot, top, out, source)
            else:
                _execute(node.alt, dot, top, out, source)
        elif node.kind == "with":
            value = _run(node.pipe, dot, top, source)
            _execute(
                node.body if _truthy(value) else node.alt, value if _truthy(value) else dot, top, out, source
            )
        elif node.kind == "range":
            value = _run(node.pipe, dot, top, source)
            # Go ranges over maps in key order
            items = [value[k] for k in sorted(value)] if isinstance(value, dict) else list(value or [])
            keys = sorted(value) if isinstance(value, dict) else range(len(items))
            if not items:
                _execute(node.alt, dot, top, out, source)
            for key, item in zip(keys, items, strict=True):
                scope = top
                if len(node.names) == 1:
                    scope = {**top, node.names[0]: item}
                elif len(node.names) == 2:
                    scope = {**top, node.names[0]: key, node.names[1]: item}
                _execute(node.body, item, scope, out, source)


def _text(value) -> str:
    """Go's default formatting of a value (``%v``)."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + " ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_text(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _index(value, *keys):
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            raise ValueError(f"index {key!r} out of range")
    return value


def _printf(fmt: str, *args) -> str:
    converted = re.sub(r"%v", "%s", fmt)
    return converted % tuple(_text(a) if isinstance(a, (list, dict, bool)) or a is None else a for a in args)


_MISSING = object()
_FUNCS = {
    "json": lambda v: json.dumps(v),
    "index": _index,
    "join": lambda items, sep: sep.join(_text(i) for i in items or []),
    "split": lambda s, sep: s.split(sep),
    "upper": lambda s: _text(s).upper(),
    "lower": lambda s: _text(s).lower(),
    "title": lambda s: _text(s).title(),
    "len": lambda v: len(v or []),
    "printf": _printf,
    "print": lambda *a: "".join(_text(x) for x in a),
    "println": lambda *a: " ".join(_text(x) for x in a) + "\n",
    "truncate": lambda s, n: _text(s)[:n],
    "pad": lambda s, before, after: " " * before + _text(s) + " " * after,
}


def _call(name: str, args: list, source: str):
    try:
        return _FUNCS[name](*args)
    except (TypeError, ValueError, KeyError) as err:
        raise TemplateError(f"template {source!r}: error calling {name}: {err}") from None


def render_rows(fmt: str, values: list[dict]) -> str:
    """``--format`` for lists (``ps``, ``images``): ``table`` prints a header and aligns columns;
    ``\\t`` written literally on a shell command line means a tab, as in Docker."""
    fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")
    is_table = fmt.startswith("table")
    if is_table:
        fmt = fmt[5:].lstrip()
    template = Template(fmt)
    lines = [template.render(v) for v in values]
    if not is_table:
        return "".join(line + "\n" for line in lines)
    header = _ACTION.sub(lambda m: _header(m.group(2)), fmt)
    rows = [line.split("\t") for line in [header, *lines]]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(max(map(len, rows)))]
    return "".join(
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() + "\n" for r in rows
    )


def _header(action: str) -> str:
    """A column title from its action: ``.Names`` -> NAMES, ``.ID`` -> CONTAINER ID (Docker's)."""
    field = action.split()[-1].lstrip(".") if action else ""
    return {"ID": "CONTAINER ID", "RunningFor": "CREATED", "CreatedAt": "CREATED AT"}.get(
        field, field.upper()
    )
