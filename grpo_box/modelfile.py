"""Ollama Modelfiles for exported GGUF files, and a renderer to check their TEMPLATE.

Ollama does not run Jinja chat templates; its TEMPLATE is a Go text/template. For the chat formats
we know (`CHATML`: `<|im_start|>role … <|im_end|>` as in Qwen and SmolLM; `LLAMA3`:
`<|start_header_id|>role<|end_header_id|> … <|eot_id|>` as in Llama 3.x) `translate_template`
writes the Go equivalent, including the HF template's default system prompt, and keeps it only if
it renders exactly like the HF template on probe conversations. A template that fails (tools,
dates, other formats) gets no TEMPLATE, with a note saying why. A BOS token is left out of the Go
template: llama.cpp's tokenizer adds it (the GGUF says `add_bos_token`), as Ollama expects.

`render_modelfile_template` is a small renderer for the subset of Go templates we emit: Ollama's
own renderer is Go code and nothing in Python renders Go templates. `parse_stops` reads the
PARAMETER stop lines back, so export can check them against the model's stop strings.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .chat_format import prefill_of, prompt_text, without_one_shot

_CONTENT = "GRPOBOXCONTENT"  # stands for a message's text while a turn becomes a regex
_PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
     {"role": "user", "content": "C"}],
)


@dataclass(frozen=True)
class ChatFormat:
    """A chat format as text around each message; `{role}`/`{content}` mark the message's parts."""

    name: str
    turn: str
    generation_prompt: str  # what opens the assistant's reply
    stops: tuple[str, ...]  # Ollama stop strings: end of turn, and the start of a new one

    def render(self, role: str, content: str) -> str:
        return self.turn.replace("{role}", role).replace("{content}", content)


CHATML = ChatFormat("ChatML", "<|im_start|>{role}\n{content}<|im_end|>\n", "<|im_start|>assistant\n",
                    ("<|im_end|>", "<|im_start|>"))
LLAMA3 = ChatFormat("Llama-3", "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
                    "<|start_header_id|>assistant<|end_header_id|>\n\n",
                    ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"))
FORMATS = (CHATML, LLAMA3)


@dataclass
class Translation:
    """`translate_template`'s answer: the Go TEMPLATE (None when none was safe to write) and why."""

    chat_format: ChatFormat | None
    template: str | None
    note: str = ""


def translate_template(tokenizer: Any) -> Translation:
    """The Go TEMPLATE equivalent to the tokenizer's chat template, checked on probe conversations.

    A reply prefill in the chat template (`chat_format`) ends the Go template's generation prompt
    too. A one-shot block is left out of the translation: the Modelfile gives Ollama that turn as
    MESSAGE lines (`modelfile_text`), so Ollama prompts the trained model exactly as training did.
    """
    hf = without_one_shot(tokenizer.chat_template or "")
    fmt = next((f for f in FORMATS if all(m in hf for m in f.stops)), None)
    prefill = prefill_of(hf)
    if fmt is not None and prefill:
        fmt = dataclasses.replace(fmt, generation_prompt=fmt.generation_prompt + prefill)
    if fmt is None:
        return Translation(None, None, "the chat template is neither ChatML nor Llama-3, the formats GRPO Box can "
                                       "write as an Ollama TEMPLATE")
    try:
        go = _go_template(fmt, _default_system(fmt, _render_hf(tokenizer, hf, fmt, _PROBES[0])))
        same = go is not None and all(
            render_modelfile_template(go, probe) == _render_hf(tokenizer, hf, fmt, probe) for probe in _PROBES)
    except Exception:  # a template that refuses a probe (e.g. a system message) is not the plain format
        same = False
    if not same:
        return Translation(fmt, None, f"the chat template looks like {fmt.name} but renders differently from the plain "
                                      f"{fmt.name} format (e.g. tools or a dated system prompt), so no TEMPLATE was "
                                      f"written")
    return Translation(fmt, go)


def _render_hf(tokenizer: Any, template: str, fmt: ChatFormat, messages: list[dict[str, str]]) -> str:
    """The HF prompt text without a leading BOS (llama.cpp's tokenizer adds that one in Ollama);
    a BOS that is also the format's turn opener (SmolLM's `<|im_start|>`) is part of the text."""
    text = prompt_text(tokenizer, messages, template)
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) and not fmt.turn.startswith(bos) else text


def _default_system(fmt: ChatFormat, rendered: str) -> str | None | bool:
    """The system text the HF template adds when a conversation has none: None if it adds none,
    False if the prompt is not `[system turn] user turn generation-prompt` at all."""
    prefix, sep, rest = rendered.partition(fmt.render("user", "Hi"))
    if not sep or rest != fmt.generation_prompt:
        return False
    if not prefix:
        return None
    pattern = re.escape(fmt.render("system", _CONTENT)).replace(_CONTENT, "(.*)")
    match = re.fullmatch(pattern, prefix, re.S)
    return match.group(1) if match else False


def _go_template(fmt: ChatFormat, default_system: str | None | bool) -> str | None:
    if default_system is False:
        return None
    head = ""
    if default_system is not None:
        head = "{{- if not .System }}" + _go_text(fmt.render("system", default_system)) + "{{ end }}\n"
    body = fmt.render("{{ .Role }}", "{{ .Content }}")
    return head + "{{- range .Messages }}" + body + "{{ end }}" + fmt.generation_prompt


def _go_text(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def modelfile_text(gguf_name: str, template: str | None, stops: list[str],
                   preamble: list[dict[str, str]] | str | None) -> str:
    """The Modelfile: the GGUF, its TEMPLATE and stops, then the run's preamble as SYSTEM plus a
    MESSAGE line for each turn of a one-shot example (Ollama puts those before every chat)."""
    lines = [f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    turns = [{"role": "system", "content": preamble}] if isinstance(preamble, str) else list(preamble or [])
    for turn in turns:
        if turn["content"]:
            keyword = "SYSTEM" if turn["role"] == "system" else f"MESSAGE {turn['role']}"
            lines.append(f'{keyword} """{_quoted(turn["content"])}"""')
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """Text safe inside a Modelfile's triple quotes."""
    return text.replace(chr(34) * 3, chr(39) * 3)


def stop_tokens(tokenizer: Any, chat_format: ChatFormat | None, eos_ids: Iterable[int] = ()) -> list[str]:
    """Ollama stop strings: the text of every EOS token (the tokenizer's and `eos_ids`, e.g. the
    generation config's list), then the chat format's turn markers."""
    eos = [tokenizer.eos_token, *(tokenizer.convert_ids_to_tokens(int(i)) for i in eos_ids)]
    stops = [*eos, *(chat_format.stops if chat_format else ())]
    return list(dict.fromkeys(s for s in stops if s))


def parse_stops(modelfile: str) -> list[str]:
    """The `PARAMETER stop` strings of a Modelfile, in order."""
    return [json.loads(m) for m in re.findall(r'^PARAMETER stop (".*")$', modelfile, re.M)]


# -- a renderer for the Go-template subset we emit ------------------------------------------------
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
