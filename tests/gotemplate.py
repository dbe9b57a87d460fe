"""Go text/template semantics for the constructs lmtune's Ollama TEMPLATE uses, so a test can render
it as Ollama would: text; `{{ PIPELINE }}` printed; `if / else if / else / end`; `range $i, $m := X`;
`$x := …` and `$x = …` (Go 1.11 assignment, visible after the block that made it); `.Field`,
`$.Field`, `$m.Field`; string literals; the functions eq, not, len and slice; parentheses. Truth is
Go's: false, 0, "" and empty lists are false. Anything else raises, so the emitter cannot drift into
constructs this renderer would guess at. No trim markers ({{- -}}): the emitter writes none.
"""

from __future__ import annotations

import json
import re

ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(:=|=|,|\(|\))|(\d+)|(\$?[A-Za-z_]*(?:\.[A-Za-z_]+)*|\$))')


def render(template: str, data: dict) -> str:
    nodes, rest = _parse(_lex(template), ())
    if rest:
        raise ValueError(f"unexpected {rest[0]!r}")
    out: list[str] = []
    _run(nodes, data, [{"$": data}], out)
    return "".join(out)


def _lex(template: str) -> list:
    items, at = [], 0
    for match in ACTION.finditer(template):
        if template[at : match.start()]:
            items.append(("text", template[at : match.start()]))
        body = match.group(1)
        if body.startswith("-") or body.endswith("-"):
            raise ValueError("trim markers are not emitted, so not rendered here")
        items.append(("action", _tokens(body)))
        at = match.end()
    if template[at:]:
        items.append(("text", template[at:]))
    return items


def _tokens(body: str) -> list[str]:
    tokens, at = [], 0
    while at < len(body.rstrip()):
        match = TOKEN.match(body, at)
        if not match or match.end() == at:
            raise ValueError(f"cannot read {body[at:]!r}")
        tokens.append(next(g for g in match.groups() if g))
        at = match.end()
    return tokens


def _parse(items: list, stop: tuple[str, ...]):
    """Nodes up to one of the stop keywords; returns (nodes, items from the stop on)."""
    nodes = []
    while items:
        kind, value = items[0]
        if kind == "text":
            nodes.append(("text", value))
            items = items[1:]
            continue
        head = value[0]
        if head in stop:
            return nodes, items
        items = items[1:]
        if head == "if":
            node, items = _parse_if(value[1:], items)
            nodes.append(node)
        elif head == "range":
            body, items = _parse(items, ("end",))
            nodes.append(("range", value[1:], body))
            items = items[1:]
        elif head in ("end", "else"):
            raise ValueError(f"unexpected {head}")
        else:
            nodes.append(("action", value))
    if stop:
        raise ValueError(f"missing {stop}")
    return nodes, items


def _parse_if(condition: list[str], items: list):
    then, items = _parse(items, ("else", "end"))
    _, words = items[0]
    items = items[1:]
    if words[0] == "end":
        return ("if", condition, then, []), items
    if words[1:2] == ["if"]:
        nested, items = _parse_if(words[2:], items)
        return ("if", condition, then, [nested]), items
    otherwise, items = _parse(items, ("end",))
    return ("if", condition, then, otherwise), items[1:]


def _run(nodes: list, dot, scopes: list[dict], out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "if":
            scopes.append({})
            _run(node[2] if _truth(_pipeline(node[1], dot, scopes)) else node[3], dot, scopes, out)
            scopes.pop()
        elif node[0] == "range":
            _range(node[1], node[2], dot, scopes, out)
        else:
            _action(node[1], dot, scopes, out)


def _range(header: list[str], body: list, dot, scopes: list[dict], out: list[str]) -> None:
    if len(header) < 5 or header[1] != "," or header[3] != ":=":
        raise ValueError(f"range form not emitted: {header}")
    for index, item in enumerate(_pipeline(header[4:], dot, scopes) or []):
        scopes.append({header[0]: index, header[2]: item})
        _run(body, item, scopes, out)
        scopes.pop()


def _action(tokens: list[str], dot, scopes: list[dict], out: list[str]) -> None:
    if len(tokens) > 2 and tokens[0].startswith("$") and tokens[1] in (":=", "="):
        value = _pipeline(tokens[2:], dot, scopes)
        if tokens[1] == ":=":
            scopes[-1][tokens[0]] = value
        else:
            next(s for s in reversed(scopes) if tokens[0] in s)[tokens[0]] = value
        return
    value = _pipeline(tokens, dot, scopes)
    if not isinstance(value, str):
        raise ValueError(f"only strings are printed by the emitted template, got {value!r}")
    out.append(value)


def _pipeline(tokens: list[str], dot, scopes: list[dict]):
    args, rest = _args(tokens, dot, scopes)
    if rest:
        raise ValueError(f"unexpected {rest}")
    return args[0] if len(args) == 1 and not callable(args[0]) else _call(args)


def _args(tokens: list[str], dot, scopes: list[dict]):
    args = []
    while tokens and tokens[0] != ")":
        token, tokens = tokens[0], tokens[1:]
        if token == "(":
            inner, tokens = _args(tokens, dot, scopes)
            tokens = tokens[1:]  # the ")"
            args.append(_call(inner) if callable(inner[0]) else inner[0])
        elif token.startswith('"'):
            args.append(json.loads(token))
        elif token.isdigit():
            args.append(int(token))
        elif token in FUNCTIONS:
            args.append(FUNCTIONS[token])
        else:
            args.append(_value(token, dot, scopes))
    return args, tokens


def _call(args: list):
    function, *rest = args
    return function(*rest)


def _value(token: str, dot, scopes: list[dict]):
    if token.startswith("$"):
        name, *fields = token.split(".")
        value = next(s[name] for s in reversed(scopes) if name in s)
    elif token.startswith("."):
        value, fields = dot, token[1:].split(".")
    else:
        raise ValueError(f"unknown word {token!r}")
    for field in filter(None, fields):
        value = value[field]
    return value


def _truth(value) -> bool:
    return value not in (False, 0, "", None) and not (isinstance(value, (list, dict)) and not value)


FUNCTIONS = {"eq": lambda a, b: a == b, "not": lambda a: not _truth(a), "len": len, "slice": lambda x, i: x[i:]}
