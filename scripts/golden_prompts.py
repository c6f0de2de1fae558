"""Prompts for scripts/make_golden.py: the default model's cases and the fixtures' cases.

A case is (name, prompt) for a literal prompt, or (name, messages) for a chat case that
make_golden.py renders with the model's own chat template (add_generation_prompt=True).
"""
from __future__ import annotations

LIGHTHOUSE_PASSAGE = """\
For most of recorded history, a ship approaching a rocky coast at night had little more than \
luck and local knowledge to rely on. The earliest lights were simple fires kept burning on \
hilltops or on the roofs of temples, tended by priests, monks or paid watchmen who were \
expected to keep them alight from dusk until dawn. The most famous of these, the Pharos of \
Alexandria, stood for well over a thousand years and was counted among the wonders of the \
ancient world, yet even its great fire could be seen for only a few dozen kilometres on a \
clear night.

The problem with a naked flame is that it sends its light in every direction at once: up \
into the sky, down onto the rocks, and back towards the land that nobody at sea cares about. \
Builders in the seventeenth and eighteenth centuries tried to fix this with polished metal \
reflectors placed behind oil lamps. A parabolic reflector gathers the light that would \
otherwise be wasted and throws it forward as a beam, and by mounting several lamps with their \
reflectors on a rotating frame a keeper could make the light sweep across the horizon. \
Sailors soon learned that a light which flashed was easier to notice than one which burned \
steadily, and that different patterns of flashes could tell one lighthouse from another.

The real revolution came in 1822, when the French physicist Augustin Fresnel presented a new \
kind of lens. Instead of one thick piece of glass, which would have been enormously heavy and \
would have absorbed much of the light passing through it, Fresnel arranged many thin rings of \
glass, each cut at its own angle, around a central lens. Prisms above and below bent the \
stray rays back into the beam. The result captured most of the lamp's light and concentrated \
it so well that a single wick could be seen more than thirty kilometres away. Within a few \
decades Fresnel lenses were installed along coasts all over the world, and the size of the \
lens, graded in orders from the huge first order to the small sixth order, became a shorthand \
for how important a light was.

Keeping such a light was demanding work. The lamp had to be trimmed and refuelled through the \
night, the brass polished, the glass cleaned of soot and salt, and the clockwork that turned \
the lens wound by hand every few hours. Keepers logged the weather, rang fog bells or sounded \
horns when visibility fell, and often lived with their families on isolated rocks where \
supplies arrived only when the sea allowed. Many stations had rules about how many people had \
to be present, because a single keeper who fell ill could leave a whole stretch of coast in \
darkness.

Over the twentieth century, electricity replaced oil, automatic lamp changers replaced the \
night watch, and radio beacons, radar and finally satellite navigation took over much of the \
lighthouse's original job. One by one the keepers were withdrawn, and today most lights are \
monitored from a distance and visited only for maintenance. Some towers have become museums \
or holiday cottages, while others still shine every night, less as the main guide for ships \
than as a backup that works when electronics fail, and as a reminder of how much effort it \
once took to keep travellers safe on a dark coast."""

LIGHTHOUSE_QUESTION = (
    "Using only the passage above, answer in two sentences: why did Fresnel's lens matter, "
    "and why did lighthouse keepers eventually disappear?"
)

PYTHON_SNIPPET = '''def merge_intervals(intervals):
    intervals.sort(key=lambda pair: pair[0])
    merged = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged'''

RUST_SNIPPET = """fn main() {
    let values = vec![3, 1, 4, 1, 5];
    for i in 0..=values.len() {
        println!("{}", values[i]);
    }
}"""

WHITESPACE_TEXT = "  Spaces   everywhere,\t\ttabs\there,\n\n\n  blank lines above,\r\nand a CRLF.   \n\n"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def with_system(system: str, text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


SMOLLM2_CASES: list[tuple[str, str | list[dict[str, str]]]] = [
    # Literal prompt (no default system message); llama.cpp's output starts
    # [504, 3575, 282, 4649, 314, 7042, 30] ("The capital of France is Paris.").
    ("capital_of_france",
     "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
    ("default_system_greeting", user("Hi! Who are you?")),
    ("system_haiku", with_system("You are a poet who answers only in haiku.", "Describe the ocean at night.")),
    ("long_passage_question", user(LIGHTHOUSE_PASSAGE + "\n\n" + LIGHTHOUSE_QUESTION)),
    ("chinese", user("请用三句话介绍一下长城的历史。")),
    ("emoji", user("What do these emoji mean together: 🎉🐍🚀❤️👨‍👩‍👧? Answer briefly.")),
    ("python_code", user("Explain what this Python function does:\n\n```python\n" + PYTHON_SNIPPET + "\n```")),
    ("rust_code", with_system("You are an expert Rust reviewer.",
                              "Find the bug in this Rust program and fix it:\n\n```rust\n" + RUST_SNIPPET + "\n```")),
    ("multi_turn", [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "I have 3 apples and buy 5 more. How many do I have?"},
        {"role": "assistant", "content": "You have 8 apples."},
        {"role": "user", "content": "I give away half of them. How many are left?"},
    ]),
    ("whitespace", user(WHITESPACE_TEXT + "Repeat the sentence above without the extra spaces.")),
    ("numbers_math", user("Compute 12345 + 67890, then 3.14159 * 2, and list the primes below 30.")),
    ("accents_unicode", user("Translate to English: « Le café de la gare à Zürich est très agréable. »")),
    ("raw_story", "Once upon a time, in a small village by the sea, there lived"),
    ("raw_code", "# Return the n-th Fibonacci number.\ndef fibonacci(n):\n"),
    # Short (< 8 tokens): first-step logits must agree with llama.cpp to ~1e-3.
    ("short_paris", "The capital of France is"),
    ("short_count", "1, 2,"),
]

FIXTURE_CASES: list[tuple[str, str | list[dict[str, str]]]] = [
    ("chat_capital", user("What is the capital of France?")),
    ("chat_system_multi_turn", [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "And one larger than 100?"},
    ]),
    ("raw_text", "The quick brown fox jumps over the lazy dog. Then it"),
    ("raw_unicode_code", "长城 🚀 café\n\tfn main() { println!(\"{}\", 1 + 2); }\n"),
    # The first two paragraphs: > 300 tokens with the trimmed vocab.
    ("chat_long", user("\n\n".join(LIGHTHOUSE_PASSAGE.split("\n\n")[:2]) + "\n\nSummarize the passage.")),
    # Short (< 8 tokens): first-step logits must agree with llama.cpp to ~1e-3.
    ("short_fox", "The fox"),
]
