"""Tool calling through the official `openai` SDK.

On the tiny qwen2 fixture (random weights, Qwen2.5's real chat template, which renders
tools): `tool_choice: required` / a named function always give calls whose arguments
validate against their schema (jsonschema), seeded runs included; streamed and
non-streamed answers agree and no call markup reaches `content`; a multi-step exchange
(call → tool result → answer) renders to exactly the prompt tokens of transformers'
rendering (tests/golden/tool_prompts.json, scripts/golden_tools.py); `auto` on a model
that answers in text gives content and no calls; the Responses API's function_call round
trip and `text.format`; and the 400s of bad tool input. The fixture's text is gibberish:
what is asserted is the shape and validity of what it is constrained to, never content.
"""

import json
import urllib.request

import jsonschema
import openai
import pytest
from openai import OpenAI

from conftest import API_KEY, MODEL, ROOT, Server

FIXTURE = ROOT / "tests" / "fixtures" / "qwen2-tiny-tied-q4_k_m.gguf"
GOLDEN = json.loads((ROOT / "tests" / "golden" / "tool_prompts.json").read_text())

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "Europe/Paris", "Asia/Tokyo"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast.",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time.",
                                      "parameters": TIME_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def qwen():
    s = Server("--model", str(FIXTURE), "--max-request-bytes", "1MiB", "--max-num-seqs", "16")
    yield s
    assert s.stop() == 0


def client(server) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=300)


def check_calls(calls, names=None):
    assert calls, "no tool calls"
    for call in calls:
        assert call.id.startswith("call_") and len(call.id) > 10, call.id
        assert call.type == "function"
        assert call.function.name in (names or SCHEMAS), call.function.name
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_gives_a_valid_call(qwen):
    done = client(qwen).chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        temperature=0, max_tokens=200,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    check_calls(choice.message.tool_calls)


def test_seeded_sampled_forced_calls_all_validate(qwen):
    c = client(qwen)
    for seed in range(10):
        done = c.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0,
            seed=seed, max_tokens=400, parallel_tool_calls=False,
        )
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls", (seed, choice)
        assert len(choice.message.tool_calls) == 1 and choice.message.content is None
        check_calls(choice.message.tool_calls)


def test_parallel_forced_calls_each_validate(qwen):
    # Parallel calls: the random model may go on calling until its budget; every call that
    # ended validates, and a cut one leaves no markup in `content`.
    for seed in range(4):
        done = client(qwen).chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0,
            seed=seed, max_tokens=120,
        )
        choice = done.choices[0]
        assert choice.message.content is None, choice
        calls = choice.message.tool_calls
        complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]
        check_calls(complete) if complete else None


def test_a_named_function_is_the_one_called(qwen):
    done = client(qwen).chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, temperature=0.7, seed=3, max_tokens=300,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = done.choices[0].message.tool_calls
    check_calls(calls, names={"get_time"})


def stream_chunks(c, **kwargs):
    return list(c.chat.completions.create(stream=True, **kwargs))


def test_streamed_and_whole_answers_agree(qwen):
    c = client(qwen)
    args = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0.8,
                seed=11, max_tokens=300, parallel_tool_calls=False)
    whole = c.chat.completions.create(**args).choices[0]
    chunks = stream_chunks(c, **args)
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            assert not (delta.content and "<tool_call" in delta.content), delta
            content += delta.content or ""
            for piece in delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                if piece.id:
                    assert call["id"] is None, "one id per call"
                    call["id"] = piece.id
                    assert piece.type == "function"
                if piece.function and piece.function.name:
                    call["name"] += piece.function.name
                if piece.function and piece.function.arguments:
                    call["arguments"] += piece.function.arguments
            finish = choice.finish_reason or finish
    assert finish == whole.finish_reason == "tool_calls"
    assert content == ""
    got = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
    want = [(t.function.name, t.function.arguments) for t in whole.message.tool_calls]
    assert got == want
    assert all(calls[i]["id"].startswith("call_") for i in calls)
    pieces = sum(1 for ch in chunks for cc in ch.choices for p in cc.delta.tool_calls or []
                 if p.function and p.function.arguments)
    assert pieces > 1, "arguments are streamed in pieces"


def test_the_sdk_stream_helper_accumulates_tool_calls(qwen):
    c = client(qwen)
    args = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0,
                max_tokens=300, parallel_tool_calls=False)
    whole = c.chat.completions.create(**args).choices[0].message.tool_calls
    with c.chat.completions.stream(**args) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(t.function.name, t.function.arguments) for t in calls] == \
        [(t.function.name, t.function.arguments) for t in whole]
    assert final.choices[0].finish_reason == "tool_calls"


def tokenize(server, text):
    """/tokenize of `text` (special tokens parsed, none added)."""
    request = urllib.request.Request(
        server.url + "/tokenize", method="POST",
        data=json.dumps({"model": MODEL, "prompt": text, "add_special_tokens": False}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())["tokens"]


def prompt_ids(c, messages, tools):
    """The prompt token ids of a chat request (vLLM's `prompt_logprobs` keys)."""
    extra = {"prompt_logprobs": 0}
    kwargs = {"tools": tools} if tools else {}
    done = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=1, temperature=0,
                                     extra_body=extra, **kwargs)
    entries = done.model_extra["prompt_logprobs"]
    ids = []
    for entry in entries[1:]:
        # Each entry lists the prompt token first (then alternatives).
        ids.append(int(next(iter(entry))))
    return ids, done.usage.prompt_tokens


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_tool_conversations_render_to_the_golden_prompt(qwen, case):
    c = client(qwen)
    want = tokenize(qwen, case["rendered"])
    ids, count = prompt_ids(c, case["messages"], case["tools"])
    assert count == len(want)
    assert ids == want[1:], case["name"]


def test_auto_with_a_model_that_answers_in_text(qwen):
    done = client(qwen).chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="auto", temperature=0, max_tokens=24,
    )
    choice = done.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    chunks = stream_chunks(client(qwen), model=MODEL, messages=ASK, tools=TOOLS, temperature=0,
                           max_tokens=24)
    streamed = "".join(cc.delta.content or "" for ch in chunks for cc in ch.choices)
    assert streamed == choice.message.content
    assert all(not cc.delta.tool_calls for ch in chunks for cc in ch.choices)


def test_a_multi_step_exchange_answers(qwen):
    c = client(qwen)
    first = c.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                      parallel_tool_calls=False, temperature=0, max_tokens=200)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    done = c.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="none",
                                     temperature=0, max_tokens=8)
    assert done.choices[0].message.tool_calls is None
    assert done.choices[0].message.content


FLAT_TOOLS = [{"type": "function", "name": t["function"]["name"],
               "description": t["function"]["description"], "parameters": t["function"]["parameters"]}
              for t in TOOLS]


def test_responses_function_call_round_trip(qwen):
    c = client(qwen)
    first = c.responses.create(model=MODEL, input=ASK[0]["content"], tools=FLAT_TOOLS,
                               tool_choice="required", parallel_tool_calls=False, temperature=0,
                               max_output_tokens=200)
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and len(first.output) == 1
    call = calls[0]
    assert call.call_id.startswith("call_") and call.name in SCHEMAS
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    second = c.responses.create(
        model=MODEL, previous_response_id=first.id, tools=FLAT_TOOLS, temperature=0,
        max_output_tokens=8,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.status in ("completed", "incomplete")
    assert [item.type for item in second.output] == ["message"]
    items = c.responses.input_items.list(second.id).data
    assert any(i.type == "function_call_output" and i.call_id == call.call_id for i in items)
    # The stored call and its result are in the second prompt: it is longer by them.
    assert second.usage.input_tokens > first.usage.input_tokens + 10


def test_responses_streamed_function_call(qwen):
    c = client(qwen)
    events = list(c.responses.create(model=MODEL, input="Time in Tokyo?", tools=FLAT_TOOLS,
                                      tool_choice={"type": "function", "name": "get_time"},
                                      parallel_tool_calls=False, temperature=0,
                                      max_output_tokens=200, stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds
    assert "response.output_text.delta" not in kinds, kinds
    done = events[-1]
    assert done.type == "response.completed"
    call = done.response.output[0]
    assert call.type == "function_call" and call.name == "get_time"
    jsonschema.validate(json.loads(call.arguments), TIME_PARAMS)
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_text_format_json_schema(server):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["name", "age"], "additionalProperties": False}
    done = client(server).responses.create(
        model=MODEL, input="Describe a person as JSON.", temperature=0, max_output_tokens=100,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
    )
    assert done.status == "completed"
    jsonschema.validate(json.loads(done.output_text), schema)
    assert done.text.format.type == "json_schema"


@pytest.mark.parametrize(
    "extra, param, needle",
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice", "nope"),
        ({"tool_choice": "required"}, "tool_choice", "required"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "nonsense"}}}}}]},
         "tools[0].function.parameters", "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}}}]},
         "tools[0].function.parameters", "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(10_000)}}}}]},
         "tools[0].function.parameters", "65536"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name", "name"),
        ({"tools": TOOLS + TOOLS[:1]}, "tools[2]", "unique"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "function"),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
         "tool_choice", "cannot be combined"),
    ],
)
def test_bad_tool_input_is_a_clear_400(qwen, extra, param, needle):
    with pytest.raises(openai.BadRequestError) as err:
        client(qwen).chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, extra_body=extra)
    body = err.value.body
    assert body["type"] == "invalid_request_error", body
    assert body["param"] == param, body
    assert needle in body["message"], body


def test_bad_tool_messages_are_clear_400s(qwen):
    c = client(qwen)
    for messages, param in [
        (ASK + [{"role": "tool", "content": "x"}], "messages[1].tool_call_id"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
        (ASK + [{"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]}],
         "messages[1].tool_calls[0]"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        assert err.value.body["param"] == param, err.value.body
