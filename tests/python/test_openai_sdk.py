"""tessera through the official `openai` SDK, unchanged: chat and completions, streamed
and not, include_usage, n=2, stop strings, seeds, logprobs, echo, models, every error
mapped to the SDK's exception class, AsyncOpenAI, and 64 concurrent streams.

The default model (SmolLM2-135M) is tiny: assertions are about structure, determinism
and lengths, plus one known greedy answer through the raw ChatML prompt.
"""

import asyncio
import time

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from conftest import API_KEY, MODEL

CHATML = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
ANSWER = "The capital of France is Paris."
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def client(server, **kw) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=kw.pop("api_key", API_KEY), max_retries=0, timeout=120, **kw)


def joined(stream) -> tuple[dict[int, str], dict[int, str], list]:
    """Text and finish reason per choice index, and every chunk."""
    texts, finishes, chunks = {}, {}, []
    for chunk in stream:
        chunks.append(chunk)
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            texts[choice.index] = texts.get(choice.index, "") + (piece or "")
            if choice.finish_reason is not None:
                assert choice.index not in finishes, "one finish_reason per choice"
                finishes[choice.index] = choice.finish_reason
    return texts, finishes, chunks


def test_greedy_completion_knows_the_answer(server):
    res = client(server).completions.create(model=MODEL, prompt=CHATML, temperature=0, max_tokens=16)
    assert res.object == "text_completion"
    assert res.choices[0].text == ANSWER
    assert res.choices[0].finish_reason == "stop"
    u = res.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens >= 0


def test_chat_completion_shape(server):
    res = client(server).chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=12)
    assert res.object == "chat.completion"
    assert res.id.startswith("chatcmpl-")
    assert res.model == MODEL
    assert res.system_fingerprint.startswith("tessera-")
    msg = res.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert res.choices[0].finish_reason in ("stop", "length")
    again = client(server).chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=12)
    assert again.choices[0].message.content == msg.content
    assert again.usage.prompt_tokens_details.cached_tokens > 0, "the repeated prompt hits the prefix cache"


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_stream_with_include_usage_equals_the_whole_response(server, kind):
    c = client(server)
    args = dict(model=MODEL, seed=5, temperature=0.8, max_tokens=24)
    if kind == "chat":
        whole = c.chat.completions.create(messages=MESSAGES, **args)
        text = whole.choices[0].message.content
        stream = c.chat.completions.create(messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **args)
    else:
        whole = c.completions.create(prompt=CHATML, **args)
        text = whole.choices[0].text
        stream = c.completions.create(prompt=CHATML, stream=True, stream_options={"include_usage": True}, **args)
    texts, finishes, chunks = joined(stream)
    assert texts[0] == text
    assert finishes[0] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    if kind == "chat":
        assert chunks[0].choices[0].delta.role == "assistant"


def test_n2_choices_stream_and_not(server):
    c = client(server)
    whole = c.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, seed=3, temperature=1.0, max_tokens=16)
    assert [ch.index for ch in whole.choices] == [0, 1]
    texts, finishes, _ = joined(c.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=2, seed=3, temperature=1.0, max_tokens=16, stream=True))
    assert texts == {0: whole.choices[0].message.content, 1: whole.choices[1].message.content}
    assert set(finishes) == {0, 1}


def test_stop_strings(server):
    c = client(server)
    res = c.completions.create(model=MODEL, prompt=CHATML, temperature=0, max_tokens=16, stop=[" Paris", "zzz"])
    assert res.choices[0].text == "The capital of France is"
    assert res.choices[0].finish_reason == "stop"
    texts, finishes, _ = joined(c.completions.create(
        model=MODEL, prompt=CHATML, temperature=0, max_tokens=16, stop=" Paris", stream=True))
    assert texts[0] == "The capital of France is" and finishes[0] == "stop"


def test_seed_reproducibility_and_lengths(server):
    c = client(server)
    args = dict(model=MODEL, messages=MESSAGES, seed=1234, temperature=1.0, max_tokens=30)
    a = c.chat.completions.create(**args).choices[0].message.content
    b = c.chat.completions.create(**args).choices[0].message.content
    assert a == b
    res = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5,
                                    extra_body={"ignore_eos": True, "top_k": 20, "min_p": 0.05})
    assert res.choices[0].finish_reason == "length" and res.usage.completion_tokens == 5
    res = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=4, extra_body={"ignore_eos": True})
    assert res.usage.completion_tokens == 4


def test_logprobs(server):
    c = client(server)
    res = c.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=6,
                                    logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = res.choices[0].logprobs.content
    assert len(content) == 6
    assert "".join(e.token for e in content) == res.choices[0].message.content
    for e in content:
        assert len(e.top_logprobs) == 3
        assert e.logprob == e.top_logprobs[0].logprob <= 0
    comp = c.completions.create(model=MODEL, prompt=CHATML, temperature=0, max_tokens=4, logprobs=2)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert "".join(lp.tokens).startswith("The capital")


def test_echo(server):
    res = client(server).completions.create(model=MODEL, prompt=CHATML, temperature=0, max_tokens=16, echo=True)
    assert res.choices[0].text == CHATML + ANSWER


def test_models(server):
    c = client(server)
    assert [m.id for m in c.models.list()] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")


def test_errors_map_to_sdk_exceptions(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=MESSAGES, top_p=3)
    assert e.value.body["param"] == "top_p" and "Given: 3" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=MESSAGES,
                                  functions=[{"name": "f", "parameters": {}}])
    assert "not supported" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=MESSAGES, response_format={"type": "json_schema", "json_schema": {"schema": {}}})
    assert e.value.body["param"] == "response_format" and "name" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=CHATML, max_tokens=4000)
    assert e.value.code == "context_length_exceeded" and "2048" in e.value.message
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-4", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        client(server, api_key="sk-wrong").chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.APIStatusError) as e:
        c.completions.create(model=MODEL, prompt="x" * (70 << 10))
    assert e.value.status_code == 413


def test_limits_and_shutdown_map_to_sdk_exceptions(tight_server):
    c = client(tight_server)
    with pytest.raises(openai.APIStatusError) as e:
        c.completions.create(model=MODEL, prompt="x" * 4096)
    assert e.value.status_code == 413
    long = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1500, stream=True,
                                     extra_body={"ignore_eos": True})
    first = next(iter(long))
    assert first.choices[0].delta.role == "assistant"
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert e.value.response.headers["retry-after"] == "1"
    tight_server.sigterm()
    with pytest.raises(openai.APIError) as e:
        for _ in long:
            pass
    assert "shutting down" in e.value.message
    with pytest.raises((openai.InternalServerError, openai.APIConnectionError)):
        c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert tight_server.stop() == 0


def test_draining_server_answers_503(tight_server):
    c = client(tight_server)
    long = c.completions.create(model=MODEL, prompt=CHATML, max_tokens=300, stream=True, extra_body={"ignore_eos": True})
    next(iter(long))
    tight_server.sigterm()
    deadline = time.time() + 5
    while True:
        try:
            c.models.list()
        except openai.InternalServerError as e:
            assert e.status_code == 503 and e.body["code"] == "shutting_down"
            break
        assert time.time() < deadline, "never refused while draining"
        time.sleep(0.05)
    long.close()
    assert tight_server.stop() == 0


def test_async_client_and_64_concurrent_streams(server):
    async def one(ac: AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await ac.completions.create(model=MODEL, prompt=CHATML, temperature=0, max_tokens=16, stream=True,
                                             stream_options={"include_usage": True}, user=f"client-{i}")
        text, usage = "", None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.text
            usage = chunk.usage or usage
        return text, usage.completion_tokens

    async def main():
        async with AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=300) as ac:
            chat = await ac.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=8)
            assert chat.choices[0].message.content
            return await asyncio.gather(*(one(ac, i) for i in range(64)))

    results = asyncio.run(main())
    assert len(results) == 64
    for text, completion_tokens in results:
        assert text == ANSWER
        assert completion_tokens == 8
