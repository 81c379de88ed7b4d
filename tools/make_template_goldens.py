#!/usr/bin/env python3
"""Writes tests/tokenizer/templates/goldens.json: each chat template in that folder rendered by
Python jinja2 over a set of conversations, as Hugging Face transformers renders chat templates.

transformers (src/transformers/utils/chat_template_utils.py, _compile_jinja_template) renders with
    ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                  extensions=[AssistantTracker, jinja2.ext.loopcontrols])
with `tojson` replaced by json.dumps(ensure_ascii=False, ...) and a `raise_exception` global that
raises TemplateError(message). This script sets up the same environment; AssistantTracker's
{% generation %} tag is reproduced as a call block that renders its body.

Each case holds the template name, messages, add_generation_prompt, bos/eos tokens, and either
the expected text or the expected error: `raise_exception` (message compared exactly) or
`runtime` (any jinja2 error: the C++ side must throw too).

Usage: python3 tools/make_template_goldens.py   (rewrites the golden file in place)
"""
import datetime
import json
import pathlib

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "tokenizer" / "templates"


class RaisedByTemplate(jinja2.exceptions.TemplateError):
    pass


def raise_exception(message):
    raise RaisedByTemplate(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' override: no HTML escaping, json.dumps options exposed.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class GenerationTag(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %} renders its body, as transformers' AssistantTracker
    does when no assistant mask is requested."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    # transformers' strftime_now is datetime.now().strftime; the goldens fix the clock at NOW, as
    # tests/tokenizer/chat_template_test.cpp does (ChatTemplate::set_now).
    env.globals["strftime_now"] = lambda format: NOW.strftime(format)
    return env


NOW = datetime.datetime(2026, 12, 6, 9, 30, 15)


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "single_user": [msg("user", "Hello!")],
    "system_multi_turn": [
        msg("system", "You are a concise assistant."),
        msg("user", "What is 2+2?"),
        msg("assistant", "4"),
        msg("user", "And 3+3?"),
    ],
    "multi_turn_no_system": [
        msg("user", "Hi there"),
        msg("assistant", " Hello! How can I help? "),
        msg("user", "Tell me a joke."),
    ],
    "unicode_and_newlines": [
        msg("user", "Ünïcödé — 日本語 🤖\nsecond line\n\n  indented\ttab"),
        msg("assistant", "  Réponse: «oui»  \n"),
        msg("user", "quotes \"double\" 'single' \\backslash {{ not a tag }} {% neither %}"),
    ],
    "ends_with_assistant": [
        msg("system", "Be brief."),
        msg("user", "Say hi"),
        msg("assistant", "Hi!"),
    ],
    "bad_alternation": [msg("user", "first"), msg("user", "second")],
    "assistant_first": [msg("assistant", "I speak first"), msg("user", "ok")],
    "empty": [],
}

# bos/eos as each model family's tokenizer spells them.
TOKENS = {
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "chatml": ("<s>", "</s>"),
    "llama2": ("<s>", "</s>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "zephyr": ("<s>", "</s>"),
    "mistral_v1": ("<s>", "</s>"),
    "mistral": ("<s>", "</s>"),
    "gemma": ("<bos>", "<eos>"),
    "phi3": ("<s>", "<|endoftext|>"),
    "gpt_oss": ("<|startoftext|>", "<|return|>"),
}


def render_case(env, source, messages, add_generation_prompt, bos, eos):
    try:
        text = env.from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                              bos_token=bos, eos_token=eos)
        return {"expected": text}
    except RaisedByTemplate as e:
        return {"expected_error": str(e), "error_kind": "raise_exception"}
    except jinja2.exceptions.TemplateSyntaxError:
        raise
    except Exception as e:  # what jinja2 raises at run time: UndefinedError, TypeError, ...
        return {"expected_error": f"{type(e).__name__}: {e}", "error_kind": "runtime"}


def main():
    env = environment()
    cases = []
    for path in sorted(TEMPLATES.glob("*.jinja")):
        name = path.stem
        source = path.read_bytes().decode("utf-8")  # bytes as C++ reads them, \r included
        bos, eos = TOKENS.get(name, ("<s>", "</s>"))
        for conversation, messages in CONVERSATIONS.items():
            for add_generation_prompt in (False, True):
                case = {"template": name, "conversation": conversation, "messages": messages,
                        "add_generation_prompt": add_generation_prompt, "bos_token": bos, "eos_token": eos}
                case.update(render_case(env, source, messages, add_generation_prompt, bos, eos))
                cases.append(case)
    out = {"generator": "tools/make_template_goldens.py", "jinja2_version": jinja2.__version__, "cases": cases}
    (TEMPLATES / "goldens.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum("expected_error" in c for c in cases)
    print(f"wrote {len(cases)} cases ({errors} expecting errors) to {TEMPLATES / 'goldens.json'}")


if __name__ == "__main__":
    main()
