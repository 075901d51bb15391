"""Requests to fuzz the gateway with, for each route (:mod:`test_fuzz_http`): Hypothesis
strategies for valid requests with one value made hostile, valid-ish requests whose
fields are each well formed or not, and any JSON; hostile headers and encodings; and the
complete valid requests that the sweep makes hostile one value at a time."""

from __future__ import annotations

from typing import Any

from fuzz_json import HOSTILE_LEAVES, JSON, LEAVES, Raw, at, nested, replaced, spots
from hypothesis import strategies as st

MODELS = st.sampled_from(
    ["sandbox-gpt", "sandbox-claude", "sandbox-gemini", "sandbox", "sandbox-embed", "nope"]
)
TEXT = st.text(max_size=20)


def mostly(valid: st.SearchStrategy[Any], odds: int = 4) -> st.SearchStrategy[Any]:
    """``valid``, and one time in ``odds`` any JSON instead: most requests get far enough
    into the gateway (routing, translation, a provider's request, the mock that answers)
    for the hostile leaf they carry to matter."""
    return st.sampled_from([True] * (odds - 1) + [False]).flatmap(
        lambda well_formed: valid if well_formed else JSON
    )


ARGUMENTS = st.sampled_from(
    [
        "{}",
        '{"a": 1}',
        "[1]",
        "not json",
        '{"a": 123456789012345678901234567890}',
        '{"a": NaN}',
        '{"a": 1e999999}',
        nested(70).text,
        nested(300).text,
        nested(2000).text,
    ]
)
"""A tool call's ``arguments``: JSON text inside a string, parsed only later."""

URLS = st.sampled_from(
    [
        "https://example.com/cat.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "data:application/pdf;base64,JVBERi0=",
        "data:,",
        "data:image/png;base64,!!!",
        "file:///etc/passwd",
        "x" * 5000,
    ]
)


def part(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"type": st.just(kind), **fields})


OPENAI_PARTS = mostly(
    part("text", text=TEXT)
    | part("image_url", image_url=st.fixed_dictionaries({"url": URLS}))
    | part("file", file=st.fixed_dictionaries({"file_data": URLS, "filename": TEXT}))
    | part("refusal", refusal=TEXT)
)
TOOL_CALLS = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["c1", "c2"]),
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {"name": st.sampled_from(["f0", "f1"]), "arguments": ARGUMENTS}
            ),
        }
    ),
    min_size=1,
    max_size=2,
    unique_by=lambda call: call["id"],
)
OPENAI_TURN = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "developer"]), "content": TEXT}
    ).map(lambda message: [message]),
    st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.lists(OPENAI_PARTS, min_size=1, max_size=3)}
    ).map(lambda message: [message]),
    # A tool exchange: the assistant's calls, then a result for each.
    st.tuples(st.none() | TEXT, TOOL_CALLS, TEXT).map(
        lambda turn: [
            {"role": "assistant", "content": turn[0], "tool_calls": turn[1]},
            *({"role": "tool", "tool_call_id": c["id"], "content": turn[2]} for c in turn[1]),
        ]
    ),
)
ANTHROPIC_BLOCKS = mostly(
    part("text", text=TEXT)
    | part(
        "image",
        source=st.fixed_dictionaries(
            {
                "type": st.sampled_from(["base64", "url"]),
                "media_type": st.sampled_from(["image/png", "image/tiff"]),
                "data": st.sampled_from(["iVBORw0KGgo=", "!!"]),
                "url": URLS,
            }
        ),
    )
    | part("tool_use", id=st.sampled_from(["t1", "t2"]), name=st.just("f0"), input=JSON)
    | part("tool_result", tool_use_id=st.sampled_from(["t1", "t2"]), content=TEXT | JSON)
    | part("thinking", thinking=TEXT, signature=TEXT)
    | part(
        "document",
        source=st.fixed_dictionaries(
            {"type": st.sampled_from(["base64", "text"]), "data": TEXT, "media_type": TEXT}
        ),
    )
)
ANTHROPIC_MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant"]),
        "content": TEXT | st.lists(ANTHROPIC_BLOCKS, min_size=1, max_size=3),
    }
)


def conversation(turn: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A list of messages opening on a user turn, then turns (each a list of messages)
    that are mostly well formed."""
    opening = {"role": "user", "content": "hi"}
    turns = st.lists(mostly(turn, 8).map(lambda t: t if isinstance(t, list) else [t]), max_size=3)
    return turns.map(lambda rest: [opening, *(message for t in rest for message in t)])


SCHEMAS = (
    st.sampled_from(
        [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"type": "array", "minItems": 10**9, "items": {"type": "string"}},
            {"type": "string", "minLength": 10**9},
            {"$ref": "#"},
            {"$defs": {"n": {"type": "object", "properties": {"x": {"$ref": "#/$defs/n"}}}}},
            {"type": ["object", "null"], "properties": {"a": nested(70)}},
        ]
    )
    | JSON
)


@st.composite
def tools(draw: st.DrawFn, flat: bool) -> list[Any]:
    """``tools``: function tools in chat's shape or the Responses API's (``flat``), or
    Anthropic's, with hostile schemas; sometimes far too many."""
    count = draw(st.sampled_from([0, 1, 2, 129]))
    shaped = st.sampled_from(["chat", "flat", "anthropic"])
    found: list[Any] = []
    for index in range(count):
        shape = draw(shaped) if index < 3 else ("flat" if flat else "chat")
        name = f"f{index}"
        if shape == "chat":
            found.append(
                {"type": "function", "function": {"name": name, "parameters": draw(SCHEMAS)}}
            )
        elif shape == "flat":
            found.append({"type": "function", "name": name, "parameters": draw(SCHEMAS)})
        else:
            found.append({"name": name, "input_schema": draw(SCHEMAS)})
    return found


NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=1, max_value=2048),
    st.integers(min_value=-(2**64), max_value=2**64)
    | st.sampled_from([Raw(str(10**30)), Raw("1e400"), Raw("NaN"), 0, -1, 1, 128, 129])
    | st.floats()
    | LEAVES,
)
"""For a numeric field: in range, out of range, not a number."""


def fields(spec: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A few of the dialect's own fields (the first bad one is all a parser reports),
    each valid-ish or hostile."""
    names = st.lists(st.sampled_from(sorted(spec)), max_size=3, unique=True)
    return names.flatmap(lambda chosen: st.fixed_dictionaries({k: spec[k] for k in chosen}))


CHAT_FIELDS = {
    "max_tokens": NUMBERS,
    "max_completion_tokens": NUMBERS,
    "n": NUMBERS,
    "seed": NUMBERS,
    "temperature": NUMBERS,
    "top_p": NUMBERS,
    "presence_penalty": NUMBERS,
    "logprobs": st.booleans() | LEAVES,
    "top_logprobs": NUMBERS,
    "stop": st.lists(st.text(max_size=4), max_size=5) | LEAVES,
    "tools": tools(flat=False) | JSON,
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | JSON,
    "response_format": st.builds(
        lambda schema: {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        SCHEMAS,
    )
    | JSON,
    "metadata": st.dictionaries(st.text(max_size=70), st.text(max_size=10), max_size=20) | JSON,
    "stream": st.booleans(),
    "stream_options": st.just({"include_usage": True}) | JSON,
    "reasoning_effort": st.sampled_from(["low", "high", "none"]) | LEAVES,
    "user": st.text(max_size=300) | LEAVES,
    "parallel_tool_calls": st.booleans() | LEAVES,
}
MESSAGES_FIELDS = {
    "system": st.text(max_size=10) | JSON,
    "stop_sequences": st.lists(st.text(max_size=4), max_size=5) | LEAVES,
    "temperature": NUMBERS,
    "top_k": NUMBERS,
    "tools": tools(flat=False) | JSON,
    "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}]) | JSON,
    "thinking": st.fixed_dictionaries({"type": st.just("enabled"), "budget_tokens": NUMBERS})
    | JSON,
    "metadata": st.fixed_dictionaries({"user_id": st.text(max_size=300) | LEAVES}) | JSON,
    "output_config": st.builds(
        lambda schema: {"format": {"type": "json_schema", "schema": schema}}, SCHEMAS
    )
    | JSON,
    "stream": st.booleans(),
}
RESPONSES_FIELDS = {
    "instructions": st.text(max_size=10) | LEAVES,
    "max_output_tokens": NUMBERS,
    "temperature": NUMBERS,
    "tools": tools(flat=True) | JSON,
    "tool_choice": st.sampled_from(["auto", "required"]) | JSON,
    "text": st.builds(
        lambda schema: {"format": {"type": "json_schema", "name": "n", "schema": schema}},
        SCHEMAS,
    )
    | JSON,
    "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "high"]) | LEAVES})
    | JSON,
    "metadata": JSON,
    "user": st.text(max_size=300) | LEAVES,
    "stream": st.booleans(),
}
RESPONSES_INPUT = TEXT | st.lists(
    mostly(
        st.fixed_dictionaries(
            {"type": st.just("message"), "role": st.sampled_from(["user", "developer"])},
            optional={"content": TEXT | st.lists(mostly(part("input_text", text=TEXT)))},
        )
        | st.fixed_dictionaries(
            {
                "type": st.just("function_call"),
                "call_id": st.sampled_from(["c1", "c2"]),
                "name": st.just("f0"),
                "arguments": ARGUMENTS,
            }
        )
        | st.fixed_dictionaries(
            {
                "type": st.just("function_call_output"),
                "call_id": st.sampled_from(["c1", "c2"]),
                "output": TEXT,
            }
        )
    ),
    max_size=4,
)
EMBEDDING_INPUT = (
    st.text(max_size=10)
    | st.lists(st.text(max_size=5), max_size=5)
    | st.lists(st.lists(NUMBERS, max_size=5), max_size=3)
    | JSON
)
EMBEDDINGS_FIELDS = {
    "dimensions": NUMBERS,
    "encoding_format": st.sampled_from(["float", "base64"]) | LEAVES,
    "user": st.text(max_size=300) | LEAVES,
}


# A valid request, then one leaf (or one object or array) of it made hostile: every field
# of every dialect gets its turn, deep in a request that would otherwise be served.

CHAT_MODELS = st.sampled_from(["sandbox-gpt", "sandbox-claude", "sandbox-gemini"])
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CITY = '{"city": "Paris"}'
VALID_CHAT = st.fixed_dictionaries(
    {
        "model": CHAT_MODELS,
        "messages": st.sampled_from(
            [
                [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                [
                    {"role": "user", "content": "weather?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": CITY},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                ],
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                        ],
                    }
                ],
            ]
        ),
    },
    optional={
        "max_tokens": st.integers(1, 64),
        "temperature": st.floats(0, 1),
        "seed": st.integers(0, 100),
        "stop": st.just(["\n\n"]),
        "tools": st.just(
            [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
        ),
        "response_format": st.just(
            {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
        ),
        "stream": st.booleans(),
        "user": st.just("u-1"),
    },
)
VALID_MESSAGES = st.fixed_dictionaries(
    {
        "model": CHAT_MODELS,
        "max_tokens": st.integers(16, 4096),
        "messages": st.sampled_from(
            [
                [{"role": "user", "content": "hi"}],
                [
                    {"role": "user", "content": "weather?"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "tool_use",
                                "id": "t1",
                                "name": "get_weather",
                                "input": {"city": "Paris"},
                            }
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}
                        ],
                    },
                ],
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "iVBORw0KGgo=",
                                },
                            },
                        ],
                    }
                ],
            ]
        ),
    },
    optional={
        "system": st.just("be brief"),
        "temperature": st.floats(0, 1),
        "top_k": st.integers(1, 40),
        "stop_sequences": st.just(["END"]),
        "tools": st.just([{"name": "get_weather", "input_schema": WEATHER}]),
        "metadata": st.just({"user_id": "u-1"}),
        "stream": st.booleans(),
    },
)
VALID_RESPONSES = st.fixed_dictionaries(
    {
        "model": CHAT_MODELS,
        "input": st.sampled_from(
            [
                "hi",
                [
                    {"type": "message", "role": "user", "content": "weather?"},
                    {
                        "type": "function_call",
                        "call_id": "c1",
                        "name": "get_weather",
                        "arguments": CITY,
                    },
                    {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                ],
            ]
        ),
    },
    optional={
        "instructions": st.just("be brief"),
        "max_output_tokens": st.integers(1, 64),
        "tools": st.just([{"type": "function", "name": "get_weather", "parameters": WEATHER}]),
        "text": st.just({"format": {"type": "json_schema", "name": "w", "schema": WEATHER}}),
        "stream": st.booleans(),
    },
)
VALID_EMBEDDINGS = st.fixed_dictionaries(
    {"model": st.just("sandbox-embed"), "input": st.sampled_from(["hi", ["a", "b"], [[1, 2]]])},
    optional={
        "dimensions": st.integers(1, 64),
        "encoding_format": st.sampled_from(["float", "base64"]),
    },
)
VALID_COUNT_TOKENS = VALID_MESSAGES.map(
    lambda body: {k: v for k, v in body.items() if k in ("model", "messages", "system", "tools")}
)

HOSTILE_STRINGS = st.one_of(
    ARGUMENTS,  # JSON text in a string, for the fields that are parsed later
    st.sampled_from(
        ["", "x" * 100_000, "\x00" * 10, "../../etc/passwd", "\u202e", "a" * 70, "1e400"]
    ),
)
HOSTILE_NUMBERS = st.sampled_from(
    [Raw("NaN"), Raw("1e400"), Raw(str(2**64)), Raw(str(10**30)), -1, 0, 2**63 - 1, 0.5, -0.0]
)


def hostile_for(value: object) -> st.SearchStrategy[Any]:
    """Something hostile in place of ``value``: mostly of its own JSON type (a string for a
    string), so that the request is read as far as it goes, sometimes anything at all."""
    if isinstance(value, str):
        own = HOSTILE_STRINGS
    elif isinstance(value, int | float) and not isinstance(value, bool):
        own = HOSTILE_NUMBERS
    else:
        own = HOSTILE_LEAVES
    return st.sampled_from([own, own, own, HOSTILE_LEAVES, JSON]).flatmap(lambda kind: kind)


def one_hostile(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    """A ``valid`` request with one value in it, anywhere, replaced by a hostile one —
    a scalar three times in four, since most fields are scalars and most parsing is of
    them."""

    def mutate(body: dict[str, Any]) -> st.SearchStrategy[Any]:
        every = list(spots(body))
        scalars = [path for path in every if not isinstance(at(body, path), dict | list)]
        where = st.sampled_from([scalars, scalars, scalars, every]).flatmap(st.sampled_from)
        return where.flatmap(
            lambda path: hostile_for(at(body, path)).map(lambda new: replaced(body, path, new))
        )

    return valid.flatmap(mutate)


def bodies(
    valid: st.SearchStrategy[dict[str, Any]],
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[Any]:
    """A valid request with one hostile value (most often); a valid-ish request, its
    required fields and a few optional ones each well formed or not, and now and then a
    field of any name; or any JSON value at all."""
    shaped = st.builds(
        lambda base, extra, stray: {**base, **extra, **stray},
        st.fixed_dictionaries({k: mostly(v, 8) for k, v in required.items()}),
        fields(optional),
        mostly(st.just({}), 8).filter(lambda stray: isinstance(stray, dict)),
    )
    modes = ["one"] * 5 + ["valid", "shaped", "shaped", "any"]
    return st.sampled_from(modes).flatmap(
        lambda mode: {"one": one_hostile(valid), "valid": valid, "shaped": shaped, "any": JSON}[
            mode
        ]
    )


CHAT = bodies(VALID_CHAT, {"model": MODELS, "messages": conversation(OPENAI_TURN)}, CHAT_FIELDS)
MESSAGES = bodies(
    VALID_MESSAGES,
    {
        "model": MODELS,
        "max_tokens": st.just(16) | NUMBERS,
        "messages": conversation(ANTHROPIC_MESSAGE),
    },
    MESSAGES_FIELDS,
)
COUNT_TOKENS = bodies(
    VALID_COUNT_TOKENS,
    {"model": MODELS, "messages": conversation(ANTHROPIC_MESSAGE)},
    {k: MESSAGES_FIELDS[k] for k in ("system", "tools", "tool_choice", "thinking")},
)
RESPONSES = bodies(VALID_RESPONSES, {"model": MODELS, "input": RESPONSES_INPUT}, RESPONSES_FIELDS)
EMBEDDINGS = bodies(
    VALID_EMBEDDINGS,
    {"model": st.sampled_from(["sandbox-embed"]) | MODELS, "input": EMBEDDING_INPUT},
    EMBEDDINGS_FIELDS,
)

HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(["\t", "\xe9"]),
    max_size=200,
).map(lambda text: text.strip(" \t"))  # what a client can send: h11 sends no edge blanks
HOSTILE_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-request-id": HEADER_TEXT,
        "x-rakka-priority": st.sampled_from(["high", "background"]) | HEADER_TEXT,
        "x-rakka-max-wait-ms": st.sampled_from(["0", "1", str(10**30), "-1", "nan"]) | HEADER_TEXT,
        "authorization": HEADER_TEXT,
        "x-api-key": HEADER_TEXT,
        "traceparent": HEADER_TEXT,
    },
)
HEADERS = st.sampled_from([True, True, False]).flatmap(
    lambda plain: st.just({}) if plain else HOSTILE_HEADERS
)
ENCODINGS = st.sampled_from(["identity"] * 6 + ["gzip", "deflate", "gzip-corrupt", "br"])
"""How a body is sent: as it is, compressed, or with a ``content-encoding`` it is not in."""


# Random examples rarely put the one value that matters (JSON text nested 300 levels
# deep) in the one field where it matters (a tool call's arguments, sent to Claude). The
# sweep is exhaustive instead: every value of a complete, valid request of each route,
# replaced in turn by each hostile value of its type, for each chat deployment. (Not
# streamed: the mocks pace a stream, and the parsing and translation are the same.)

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
TOOL_EXCHANGE = [
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": CITY}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
]
IMAGE_TURN = {
    "role": "user",
    "content": [
        {"type": "text", "text": "and this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ],
}
SWEPT: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [
        {
            "messages": [*TOOL_EXCHANGE, IMAGE_TURN],
            "max_tokens": 32,
            "temperature": 0.5,
            "seed": 7,
            "stop": ["END"],
            "tools": [WEATHER_TOOL],
            "tool_choice": "auto",
            "user": "u-1",
        },
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": WEATHER},
            },
        },
    ],
    "/v1/messages": [
        {
            "max_tokens": 256,
            "system": "be brief",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "let me look"},
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBORw0KGgo=",
                            },
                        },
                    ],
                },
            ],
            "tools": [{"name": "get_weather", "input_schema": WEATHER}],
            "tool_choice": {"type": "auto"},
            "temperature": 0.5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-1"},
        },
        {
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "output_config": {"format": {"type": "json_schema", "schema": WEATHER}},
        },
    ],
    "/v1/messages/count_tokens": [
        {
            "system": "be brief",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "get_weather", "input_schema": WEATHER}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        }
    ],
    "/v1/responses": [
        {
            "instructions": "be brief",
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "weather?"}],
                },
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": CITY,
                },
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
            "max_output_tokens": 64,
            "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER}],
            "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER}},
        }
    ],
}
SWEPT_EMBEDDINGS = {
    "model": "sandbox-embed",
    "input": ["a", "b"],
    "dimensions": 8,
    "encoding_format": "base64",
    "user": "u-1",
}
