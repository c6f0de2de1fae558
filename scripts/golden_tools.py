#!/usr/bin/env python3
"""Write tests/golden/tool_prompts.json: conversations with tools, tool calls and tool
results rendered through Qwen2.5's chat template exactly as Hugging Face transformers
renders them (`apply_chat_template`: jinja2's ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and loopcontrols, `tojson` = json.dumps without ASCII
escaping). The oracle of tessera's tool prompts (src/server/tool_calls_tests.rs, and
tests/python/test_tools_sdk.py through the live server).

Each case keeps the request as an OpenAI client sends it (`messages` with `tool_calls`
whose `arguments` are JSON text, `tool` messages with `tool_call_id`, and `tools`) and
the text transformers renders from it after the conversion vLLM and transformers' docs
ask for (each call's `arguments` parsed into an object), with add_generation_prompt.

Usage: python3 scripts/golden_tools.py  (needs only jinja2; no network)
"""
import copy
import json
import os

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"
OUT = os.path.join(ROOT, "tests", "golden", "tool_prompts.json")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    },
}


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


CASES = [
    {
        "name": "tools_first_turn",
        "tools": [WEATHER, TIME],
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    },
    {
        "name": "call_result_answer",
        "tools": [WEATHER, TIME],
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris and the time in Tokyo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                call("call_abc123", "get_weather", {"city": "Paris", "unit": "celsius"}),
                call("call_def456", "get_time", {"zone": "Asia/Tokyo"}),
            ]},
            {"role": "tool", "tool_call_id": "call_abc123", "content": "{\"temp\": 21, \"sky\": \"sunny\"}"},
            {"role": "tool", "tool_call_id": "call_def456", "content": "09:30"},
            {"role": "assistant", "content": "It is 21 °C and sunny in Paris; 09:30 in Tokyo."},
            {"role": "user", "content": "Thanks! And Berlin?"},
        ],
    },
    {
        "name": "history_without_tools",
        "tools": None,
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                call("call_x", "get_weather", {"city": "Oslo"})]},
            {"role": "tool", "tool_call_id": "call_x", "content": "snow"},
        ],
    },
]


def hf_environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def hf_messages(messages):
    """OpenAI messages as transformers' templates take them: arguments as objects."""
    out = copy.deepcopy(messages)
    for m in out:
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    return out


def main():
    with open(os.path.join(ROOT, "tests", "fixtures", "chat_templates", TEMPLATE)) as f:
        source = f.read()
    template = hf_environment().from_string(source)
    cases = []
    for case in CASES:
        rendered = template.render(messages=hf_messages(case["messages"]), tools=case["tools"],
                                   documents=None, add_generation_prompt=True,
                                   bos_token="", eos_token="<|im_end|>")
        cases.append({**case, "rendered": rendered})
    with open(OUT, "w") as f:
        json.dump({"template": TEMPLATE, "generator": "scripts/golden_tools.py (jinja2 "
                   + jinja2.__version__ + ")", "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
