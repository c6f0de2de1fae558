"""Structured output through the official `openai` SDK on the default model (SmolLM2-135M):
`beta.chat.completions.parse` with a nested Pydantic model, 50 seeded runs at temperature
1.0 that must all validate (jsonschema), `json_object`, vLLM's guided_regex / guided_choice,
streamed = non-streamed, `n` > 1, a `max_tokens` cut, and the 400s of bad specs.

The model is tiny: what is asserted is that the output matches its constraint, always.
"""

import json
import re
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Literal, Optional

import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from conftest import API_KEY, MODEL, Server


class Colour(str, Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Pet(BaseModel):
    kind: Literal["cat", "dog", "bird"]
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=30)


class Owner(BaseModel):
    name: str = Field(max_length=16)
    favourite: Colour
    pets: list[Pet] = Field(min_length=1, max_length=3)
    nickname: Optional[str] = Field(default=None, max_length=10)
    # A float's digits are unbounded in JSON, so a run could spend its whole budget on
    # one number and end with `length`; `multipleOf` bounds them (and stays a number
    # with bounds).
    rating: float = Field(ge=0, le=5, multiple_of=0.5)


ASK = [{"role": "user", "content": "Describe a pet owner and their pets as JSON."}]


def client(server) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=300)


def owner_schema() -> dict:
    return Owner.model_json_schema()


def test_parse_nested_pydantic_model(server):
    c = client(server)
    done = c.beta.chat.completions.parse(
        model=MODEL, messages=ASK, response_format=Owner, temperature=0, max_tokens=400
    )
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Owner)
    jsonschema.validate(json.loads(choice.message.content), owner_schema())


def test_fifty_seeded_runs_at_temperature_one_all_validate(server):
    c = client(server)

    def one(seed: int):
        done = c.beta.chat.completions.parse(
            model=MODEL, messages=ASK, response_format=Owner, temperature=1.0, seed=seed, max_tokens=400
        )
        return seed, done.choices[0]

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(one, range(50)))
    texts = set()
    for seed, choice in results:
        assert choice.finish_reason == "stop", f"seed {seed}: {choice.message.content!r}"
        document = json.loads(choice.message.content)
        jsonschema.validate(document, owner_schema())
        assert isinstance(choice.message.parsed, Owner)
        texts.add(choice.message.content)
    assert len(texts) > 10, "sampling at temperature 1.0 should vary the documents"


def test_json_object_gives_a_json_object(server):
    c = client(server)
    for seed in range(3):
        done = c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Give me a JSON object describing Paris."}],
            response_format={"type": "json_object"},
            temperature=1.0,
            seed=seed,
            max_tokens=500,
        )
        choice = done.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:
            assert choice.finish_reason == "length"
            assert choice.message.content.startswith("{")


def test_guided_regex_and_choice_hold(server):
    c = client(server)
    pattern = r"[A-Z][a-z]{2,6} [0-9]{1,3}"
    choices = ["alpha", "beta", "gamma delta"]
    for seed in range(5):
        done = c.chat.completions.create(
            model=MODEL, messages=ASK, temperature=1.0, seed=seed, max_tokens=20,
            extra_body={"guided_regex": pattern},
        )
        assert re.fullmatch(pattern, done.choices[0].message.content), done.choices[0].message.content
        done = c.completions.create(
            model=MODEL, prompt="My favourite letter is", temperature=1.0, seed=seed, max_tokens=20,
            extra_body={"guided_choice": choices},
        )
        assert done.choices[0].text in choices
        assert done.choices[0].finish_reason == "stop"


def test_streamed_equals_non_streamed_and_n_choices_each_validate(server):
    c = client(server)
    fmt = {"type": "json_schema", "json_schema": {"name": "owner", "schema": owner_schema(), "strict": True}}
    whole = c.chat.completions.create(
        model=MODEL, messages=ASK, response_format=fmt, temperature=1.0, seed=11, max_tokens=400, n=3
    )
    assert len(whole.choices) == 3
    for choice in whole.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), owner_schema())
    streamed = {}
    for chunk in c.chat.completions.create(
        model=MODEL, messages=ASK, response_format=fmt, temperature=1.0, seed=11, max_tokens=400, n=3, stream=True
    ):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    assert [streamed[i] for i in range(3)] == [ch.message.content for ch in whole.choices]


def test_max_tokens_cut_ends_with_length(server):
    c = client(server)
    done = c.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}, max_tokens=4, temperature=0
    )
    assert done.choices[0].finish_reason == "length"
    with pytest.raises(openai.LengthFinishReasonError):
        c.beta.chat.completions.parse(model=MODEL, messages=ASK, response_format=Owner, max_tokens=4)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"guided_regex": "a(b"}, "invalid regex"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "cycle", "schema": {
            "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}}}}, "response_format"),
        ({"guided_json": {"$ref": "https://example.invalid/x.json"}}, "guided_json"),
        ({"guided_json": {"type": "object"}, "guided_regex": "a"}, "only one"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "name"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"guided_choice": []}, "non-empty"),
        ({"guided_json": {"type": "object"}, "ignore_eos": True}, "ignore_eos"),
    ],
)
def test_bad_specs_are_clear_400s(server, extra, needle):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, extra_body=extra)
    body = err.value.body
    assert needle in body["message"], body
    assert body["type"] == "invalid_request_error"


def test_ten_thousand_properties_are_a_clear_400():
    # Above the default body limit of the shared server: one with room for the schema.
    big = Server("--max-request-bytes", "1MiB")
    try:
        schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(10_000)}}
        with pytest.raises(openai.BadRequestError) as err:
            client(big).chat.completions.create(
                model=MODEL, messages=ASK, max_tokens=8,
                response_format={"type": "json_schema", "json_schema": {"name": "huge", "schema": schema}},
            )
        body = err.value.body
        assert body["param"] == "response_format" and "65536" in body["message"], body
    finally:
        assert big.stop() == 0


def test_a_stop_string_ends_a_constrained_output(server):
    c = client(server)
    pattern = r"[a-z]{3,5} [a-z]{3,5}"
    for seed in range(3):
        done = c.chat.completions.create(
            model=MODEL, messages=ASK, temperature=1.0, seed=seed, max_tokens=20, stop=[" "],
            extra_body={"guided_regex": pattern},
        )
        choice = done.choices[0]
        assert choice.finish_reason == "stop"
        assert re.fullmatch(r"[a-z]{3,5}", choice.message.content), choice.message.content
