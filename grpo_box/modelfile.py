"""Ollama Modelfiles for exported GGUF files, and a renderer to check their TEMPLATE.

Ollama does not run Jinja chat templates; its TEMPLATE is a Go text/template. For ChatML models
(`<|im_start|>role … <|im_end|>`: Qwen, SmolLM, …) `ollama_template` writes the Go equivalent,
including the HF template's default system prompt, and checks it by rendering both on probe
conversations. `render_modelfile_template` is a small renderer for the subset of Go templates we
emit: Ollama's own renderer is Go code and nothing in Python renders Go templates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_CHATML_PREFIX = re.compile(r"^<\|im_start\|>system\n(.*)<\|im_end\|>\n$", re.S)
_PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
     {"role": "user", "content": "C"}],
)


def ollama_template(tokenizer: Any) -> str | None:
    """A Go-template TEMPLATE equivalent to the tokenizer's ChatML chat template, or None."""
    hf = tokenizer.chat_template or ""
    if "<|im_start|>" not in hf or "<|im_end|>" not in hf:
        return None
    rendered = tokenizer.apply_chat_template(_PROBES[0], tokenize=False, add_generation_prompt=True)
    prefix, sep, _ = rendered.partition("<|im_start|>user\nHi<|im_end|>\n")
    match = _CHATML_PREFIX.match(prefix)
    if not sep or (prefix and not match):
        return None
    go = _chatml_go(match.group(1) if match else None)
    ok = all(
        render_modelfile_template(go, probe) == tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        for probe in _PROBES
    )
    return go if ok else None


def _chatml_go(default_system: str | None) -> str:
    head = ""
    if default_system is not None:
        head = "{{- if not .System }}<|im_start|>system\n" + _go_text(default_system) + "<|im_end|>\n{{ end }}\n"
    return head + "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def _go_text(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def modelfile_text(gguf_name: str, template: str | None, stops: list[str], system: str | None) -> str:
    lines = [f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    if system:
        lines.append(f'SYSTEM """{system.replace(chr(34) * 3, chr(39) * 3)}"""')
    return "\n".join(lines) + "\n"


def stop_tokens(tokenizer: Any, chatml: bool) -> list[str]:
    stops = ["<|im_end|>", "<|im_start|>"] if chatml else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.insert(0, tokenizer.eos_token)
    return stops


# -- a renderer for the Go-template subset we emit ---------------------------------------------
_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\(|\)|\$?\.?[A-Za-z_][\w.]*|\$|\.|-?\d+')
_FUNCS = {"not", "eq", "ne", "and", "or", "len", "index"}


def render_modelfile_template(template: str, messages: list[dict[str, str]]) -> str:
    """Render an Ollama TEMPLATE for chat `messages` the way Ollama does (Go text/template subset).

    Supports text, `{{ .Field }}`, `{{ if }}/{{ else }}/{{ end }}`, `{{ range .Messages }}`, trim
    markers `{{-`/`-}}`, and `not eq ne and or len index`. Like Ollama, `.System` is the system
    messages joined by blank lines and consecutive messages of one role are merged.
    """
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    collated: list[dict[str, str]] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"]:
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    root = {"System": system, "Messages": collated, "Prompt": "", "Response": ""}
    nodes, rest = _parse(_lex(template), 0, ())
    if rest != len(_lex(template)):
        raise ValueError("unbalanced {{ end }} in template")
    return "".join(_render(nodes, root, root))


def _lex(template: str) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", m.group(2).strip()))
        pos = m.end()
        if m.group(3):
            remaining = template[pos:]
            pos += len(remaining) - len(remaining.lstrip())
    parts.append(("text", template[pos:]))
    return parts


def _parse(tokens: list[tuple[str, str]], i: int, stop: tuple[str, ...]) -> tuple[list[Any], int]:
    nodes: list[Any] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in stop:
            return nodes, i
        if word in ("if", "range"):
            body, i = _parse(tokens, i + 1, ("else", "end"))
            other: list[Any] = []
            if tokens[i][1] == "else":
                other, i = _parse(tokens, i + 1, ("end",))
            nodes.append((word, value[len(word):].strip(), body, other))
            i += 1
            continue
        if word in ("end", "else"):
            raise ValueError(f"unexpected {{{{ {value} }}}}")
        nodes.append(("expr", value))
        i += 1
    if stop:
        raise ValueError(f"missing {{{{ end }}}} (expected one of {stop})")
    return nodes, i


def _render(nodes: list[Any], dot: Any, root: Any) -> Iterator[str]:
    for node in nodes:
        if node[0] == "text":
            yield node[1]
        elif node[0] == "expr":
            value = _eval(node[1], dot, root)
            yield "" if value is None else str(value)
        elif node[0] == "if":
            yield from _render(node[2] if _truthy(_eval(node[1], dot, root)) else node[3], dot, root)
        else:  # range
            items = _eval(node[1], dot, root) or []
            for item in items:
                yield from _render(node[2], item, root)
            if not items:
                yield from _render(node[3], dot, root)


def _eval(expr: str, dot: Any, root: Any) -> Any:
    tokens = _TOKEN.findall(expr)
    value, pos = _eval_tokens(tokens, 0, dot, root)
    if pos != len(tokens):
        raise ValueError(f"cannot parse template expression {expr!r}")
    return value


def _eval_tokens(tokens: list[str], pos: int, dot: Any, root: Any) -> tuple[Any, int]:
    if tokens[pos] in _FUNCS:
        name, args, pos = tokens[pos], [], pos + 1
        while pos < len(tokens) and tokens[pos] != ")":
            arg, pos = _operand(tokens, pos, dot, root)
            args.append(arg)
        return _call(name, args), pos
    return _operand(tokens, pos, dot, root)


def _operand(tokens: list[str], pos: int, dot: Any, root: Any) -> tuple[Any, int]:
    tok = tokens[pos]
    if tok == "(":
        value, pos = _eval_tokens(tokens, pos + 1, dot, root)
        return value, pos + 1
    if tok.startswith('"'):
        return json.loads(tok), pos + 1
    if re.fullmatch(r"-?\d+", tok):
        return int(tok), pos + 1
    if tok in (".", "$"):
        return (dot if tok == "." else root), pos + 1
    base, path = (root, tok[2:]) if tok.startswith("$.") else (dot, tok[1:])
    if not tok.startswith((".", "$.")):
        raise ValueError(f"unsupported template token {tok!r}")
    for key in path.split("."):
        base = base.get(key) if isinstance(base, dict) else None
    return base, pos + 1


def _call(name: str, args: list[Any]) -> Any:
    if name == "not":
        return not _truthy(args[0])
    if name in ("eq", "ne"):
        same = any(args[0] == a for a in args[1:])
        return same if name == "eq" else not same
    if name == "and":
        return next((a for a in args if not _truthy(a)), args[-1])
    if name == "or":
        return next((a for a in args if _truthy(a)), args[-1])
    if name == "len":
        return len(args[0] or [])
    value = args[0]
    for key in args[1:]:
        value = value[key]
    return value


def _truthy(value: Any) -> bool:
    return bool(value)
