"""An Ollama Modelfile beside an exported GGUF: FROM the file, TEMPLATE in Ollama's Go template syntax
made from the run's template, PARAMETER stop for the tokens that end an answer, SYSTEM for the
template's default system prompt.

Ollama renders TEMPLATE with Go's text/template over `.System` (the system prompt: the request's, or
the Modelfile's SYSTEM) and `.Messages` (each `.Role`, `.Content`; system messages included, which
the template skips). The template is written without whitespace-trimming markers (`{{-`), so every
character of it is the prompt's: a trim marker would also eat ChatML's newlines. The constructs it
uses are few (if/else if/end, range over .Messages, eq, len, slice, variables) and
tests/gotemplate.py renders them with Go's semantics to check the prompt against lmtune's own.

For `template: auto` (the tokenizer's own Jinja template) the template's parts are read off its
renderings of a few probe conversations (`infer_template`), and used only if the result renders
every probe exactly as the Jinja template does; tool calls are not written into TEMPLATE.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmtune.templates.hf import TokenizerChatTemplate
from lmtune.templates.template import Template, fill

PROBES = {"system": "SYSTEMPROBEx", "user": "USERPROBEx", "assistant": "ANSWERPROBEx", "user2": "SECONDPROBEx"}


def write_modelfile(folder: Path, gguf_name: str, job, adapter_only: bool) -> tuple[Path | None, str]:
    """folder/ollama/Modelfile for the exported file; (None, why) where Ollama could not use one."""
    if adapter_only:
        if job.source_gguf is None:
            return None, ("no Modelfile: Ollama applies an ADAPTER over the base as GGUF; export the base with "
                          "`lmtune export --model BASE --format gguf` and add `ADAPTER <this file>` to its Modelfile")
        head = [f"FROM {job.source_gguf.resolve()}", f"ADAPTER ../{gguf_name}"]
    else:
        head = [f"FROM ../{gguf_name}"]
    template, note = ollama_template(job)
    lines = [f"# Made by lmtune export from {job.name} (template: {getattr(job.template, 'name', 'none')})", *head]
    if template is not None:
        lines.append(f'TEMPLATE """{go_template(template, job.tokenizer.bos_token or "", job.tokenizer.eos_token)}"""')
        if template.default_system:
            lines.append(f'SYSTEM """{template.default_system}"""')
        stops = [_text(end, job.tokenizer) for end in template.end_tokens()] + list(template.stop)
    else:
        stops = list(job.end_tokens)
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in dict.fromkeys(stops) if stop]
    path = folder / "ollama" / "Modelfile"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, note


def ollama_template(job) -> tuple[Template | None, str]:
    """The run's template as a lmtune Template the Go emitter writes, or (None, why not)."""
    if job.template is None:
        return None, "no TEMPLATE in the Modelfile: the model has no chat template"
    template = infer_template(job.tokenizer) if isinstance(job.template, TokenizerChatTemplate) else job.template
    if template is None:
        return None, ("no TEMPLATE in the Modelfile: the tokenizer's chat template does more than system, user and "
                      "assistant turns; Ollama falls back to matching the template inside the GGUF")
    if template.system_in_first_user and template.prefix:
        return None, f"no TEMPLATE in the Modelfile: template '{template.name}' puts the system prompt inside the first user turn after a prefix"
    return template, ""


def go_template(t: Template, bos: str, eos: str) -> str:
    """The template in Go text/template syntax over Ollama's .System and .Messages."""
    marks = {"bos": bos, "eos": eos}
    sys_before, sys_after = _around(t.system, marks)
    user_before, user_after = _around(t.user, marks)
    written, after = t.split_end(t.assistant)
    answer_before, answer_end = _around(written, marks)
    system = f"{sys_before}{{{{ .System }}}}{sys_after}"
    fused = f"{{{{ if $system }}}}{system.replace('.System', '$system')}{{{{ $system = \"\" }}}}{{{{ end }}}}" if t.system_in_first_user else ""
    parts = [_literal(fill(t.prefix, **marks))]
    if t.system_in_first_user:
        parts.append("{{ $system := .System }}")
    elif t.always_system:
        parts.append(system)
    else:
        parts.append(f"{{{{ if .System }}}}{system}{{{{ end }}}}")
    generation = _literal(t.generation_block(t.thinking_default))
    parts += [
        "{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}",
        f'{{{{ if eq $m.Role "user" }}}}{user_before}{fused}{{{{ $m.Content }}}}{user_after}',
        f"{{{{ if $last }}}}{generation}{{{{ end }}}}" if generation else "",
        f'{{{{ else if eq $m.Role "assistant" }}}}{answer_before}{{{{ $m.Content }}}}',
        f"{{{{ if not $last }}}}{answer_end}{_literal(fill(after + t.separator, **marks))}{{{{ end }}}}",
        "{{ end }}{{ end }}",
    ]
    return "".join(parts)


def _around(fmt: str, marks: dict[str, str]) -> tuple[str, str]:
    """A format's text before and after its {content}, each safe as Go template text."""
    before, _, after = fmt.partition("{content}")
    return _literal(fill(before, **marks)), _literal(fill(after, **marks))


def _literal(text: str) -> str:
    """Text as Go template text: '{{' would open an action, so it is written as an action printing it.
    The Modelfile's TEMPLATE \"\"\" block cannot hold three quotes either."""
    return text.replace("{{", '{{ "{{" }}').replace('"""', '{{ "\\"\\"\\"" }}')


def _text(end: str, tokenizer) -> str:
    return tokenizer.eos_token if end == "{eos}" else end


# ---------------------------------------------------------------- template: auto


def infer_template(tokenizer) -> Template | None:
    """A lmtune Template equal to the tokenizer's Jinja chat template on system/user/assistant turns,
    read off its renderings of probe conversations; None where no such template renders them all alike."""
    from jinja2 import TemplateError

    try:  # a template may refuse a probe (Mistral's takes no system message): then it is more than turns
        parts = _probe_parts(tokenizer)
        if parts is None:
            return None
        template = Template(name="auto", tokens=tuple(t for t in tokenizer.all_special_tokens if t not in (tokenizer.eos_token, tokenizer.bos_token)), **parts)
        return template if _renders_alike(template, tokenizer) else None
    except (ValueError, IndexError, TemplateError):
        return None


def _probe_parts(tokenizer) -> dict | None:
    p = PROBES
    user, user2, answer = ({"role": r, "content": p[k]} for r, k in (("user", "user"), ("user", "user2"), ("assistant", "assistant")))
    system = {"role": "system", "content": p["system"]}
    plain, with_system, turns = (_render(tokenizer, m) for m in ([user], [system, user], [user, answer, user2]))
    before_user, rest = turns.split(p["user"])
    user_tail, rest = rest.split(p["assistant"])
    between, gen_tail = rest.split(p["user2"])
    end = max((t for t in (tokenizer.eos_token, *tokenizer.all_special_tokens) if t and between.startswith(t)), key=len, default=None)
    if end is None or user_tail != gen_tail or plain != before_user + p["user"] + user_tail:
        return None
    opening = _common_suffix(between[len(end):], before_user)
    after_end = between[len(end): len(between) - len(opening)]
    block, system_block = before_user[: len(before_user) - len(opening)], with_system.split(p["user"])[0]
    if not system_block.endswith(opening):
        return None
    system_block = system_block[: len(system_block) - len(opening)]
    sys_before, sys_after = system_block.split(p["system"])
    if system_block.startswith(block) and sys_before.startswith(block):  # no default system prompt
        prefix, default, sys_before = block, "", sys_before[len(block):]
    elif block.startswith(sys_before) and block.endswith(sys_after):  # a default, or a block written always (Llama 3.2's dates)
        prefix, default = "", block[len(sys_before): len(block) - len(sys_after)]
    else:
        return None
    marks = _marks(tokenizer)
    return {"prefix": marks(prefix), "system": marks(sys_before + "{content}" + sys_after), "default_system": default,
            "always_system": bool(block) and not default, "user": marks(opening + "{content}" + user_tail),
            "assistant": marks("{content}" + end + after_end)}


def _marks(tokenizer):
    """Literal BOS/EOS text back to {bos}/{eos}, as lmtune's templates write them."""
    def mark(text: str) -> str:
        for name, token in (("eos", tokenizer.eos_token), ("bos", tokenizer.bos_token)):
            if token:
                text = text.replace(token, "{" + name + "}")
        return text
    return mark


def _renders_alike(template: Template, tokenizer) -> bool:
    from lmtune.data.records import ASSISTANT, USER, Conversation, Turn

    turns = [Turn(USER, "你好，请介绍一下你自己。"), Turn(ASSISTANT, "我是一个助手。"), Turn(USER, "What can you do?"),
             Turn(ASSISTANT, "I can answer questions."), Turn(USER, "谢谢")]
    marks = {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token}
    for system in (None, "You are concise. 请简洁。"):
        for count in (1, 3, 5):
            conv = Conversation(turns[:count], system=system)
            mine = "".join(s.text for s in template.render(conv, **marks))
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": t.role, "content": t.content} for t in conv.turns]
            if mine != _render(tokenizer, messages):
                return False
    return True


def _render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:]
