"""Tool schemas, tool_choice, grammar and reply parsing (pure logic)."""

from __future__ import annotations

import json

import jsonschema
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from tidal_agents import tool_protocol as tp
from tidal_agents.errors import TidalConfigError


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


SPECS = tp.to_tool_specs([add, weather])


def test_specs_from_tools() -> None:
    assert [s.name for s in SPECS] == ["add", "weather"]
    assert SPECS[0].parameters["properties"]["a"]["type"] == "integer"
    assert SPECS[0].parameters["additionalProperties"] is False


@pytest.mark.parametrize(
    "value, mode, name",
    [
        (None, "auto", None), ("auto", "auto", None), ("any", "required", None),
        ("required", "required", None), (True, "required", None), ("none", "none", None),
        ("add", "named", "add"), ({"type": "function", "function": {"name": "weather"}},
                                  "named", "weather"),
    ],
)
def test_tool_choice(value: object, mode: str, name: str | None) -> None:
    choice = tp.parse_tool_choice(value, SPECS)
    assert (choice.mode, choice.name) == (mode, name)


def test_unknown_tool_choice_is_clear() -> None:
    with pytest.raises(TidalConfigError, match="'nope', which is not a bound tool.*add"):
        tp.parse_tool_choice("nope", SPECS)
    with pytest.raises(TidalConfigError, match="not supported"):
        tp.parse_tool_choice(3.5, SPECS)


def test_invalid_tool_schema_rejected() -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}
    with pytest.raises(TidalConfigError, match="invalid parameter schema"):
        tp.to_tool_specs([bad])
    assert len(tp.to_tool_specs([add, add])) == 1  # the same tool twice is one tool
    other_add = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}}}}
    with pytest.warns(UserWarning, match="named 'add'; using the first"):
        specs = tp.to_tool_specs([add, other_add])
    assert [s.name for s in specs] == ["add"] and "a" in specs[0].parameters["properties"]


def test_grammar_admits_exactly_the_protocol() -> None:
    auto = tp.reply_grammar(SPECS, tp.ToolChoice("auto"), parallel=False)
    assert auto is not None and auto.json_schema is not None
    schema = auto.json_schema
    jsonschema.validate({"name": "add", "arguments": {"a": 1, "b": 2}}, schema)
    jsonschema.validate({"answer": "hi"}, schema)
    for bad in ({"name": "nope", "arguments": {}}, {"name": "add", "arguments": {"a": "x"}},
                {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    required = tp.reply_grammar(SPECS, tp.ToolChoice("required"), parallel=True)
    assert required is not None and required.json_schema is not None
    jsonschema.validate(
        {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}, required.json_schema
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"answer": "hi"}, required.json_schema)
    named = tp.reply_grammar(SPECS, tp.ToolChoice("named", "weather"), parallel=True)
    assert named is not None and named.json_schema is not None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "add", "arguments": {"a": 1, "b": 2}}, named.json_schema)
    # "none" with tools bound: an answer, still in the protocol's JSON
    assert tp.reply_grammar(SPECS, tp.ToolChoice("none"), parallel=False) == tp.answer_grammar()
    assert tp.reply_grammar([], tp.ToolChoice("none"), parallel=False) is None
    assert '{"answer"' in tp.tools_system_prompt(SPECS, tp.ToolChoice("none"), False)
    assert "Do not call a tool" in tp.tools_system_prompt(SPECS, tp.ToolChoice("none"), False)


def test_parse_reply() -> None:
    one = tp.parse_reply('{"name": "add", "arguments": {"a": 1, "b": 2}}', True)
    assert one.content == "" and one.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert one.tool_calls[0]["id"].startswith("call_")
    many = tp.parse_reply(json.dumps({"tool_calls": [
        {"name": "add", "arguments": {"a": 1, "b": 2}},
        {"name": "weather", "arguments": {"city": "Zürich"}}]}), True)
    assert [c["name"] for c in many.tool_calls] == ["add", "weather"]
    assert len({c["id"] for c in many.tool_calls}) == 2
    answer = tp.parse_reply('{"answer": "It is 3."}', True)
    assert answer.content == "It is 3." and not answer.tool_calls
    cut = tp.parse_reply('{"name": "add", "argu', True)
    assert cut.invalid and not cut.tool_calls and cut.content == ""
    cut_answer = tp.parse_reply('{"answer": "It is 8\\u00b0 and su', True)
    assert cut_answer.content == "It is 8\u00b0 and su" and cut_answer.invalid
    assert tp.parse_reply("plain", False).content == "plain"


def test_messages_round_trip() -> None:
    ai = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "x"}])
    chat = tp.to_chat_dicts([
        SystemMessage("sys"), HumanMessage("hi"), ai,
        ToolMessage("3", tool_call_id="x"), ToolMessage("boom", tool_call_id="y", status="error"),
    ])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool", "tool"]
    assert json.loads(chat[2]["content"]) == {"name": "add", "arguments": {"a": 1, "b": 2}}
    # a result is said with the call it answers; an unknown call id keeps the bare text
    assert chat[3]["content"] == "The result of add(a=1, b=2) is 3."
    assert chat[4]["content"] == "boom (error)"
    failed = tp.to_chat_dicts([ai, ToolMessage("bad b", tool_call_id="x", status="error")])
    assert failed[1]["content"] == "The call add(a=1, b=2) failed (error): bad b"
    quoted = tp.render_tool_result('{"t": 1}', {"name": "get", "args": {"q": 'a"b'}}, False)
    assert quoted == 'The result of get(q="a\\"b") is {"t": 1}'
    with_tools = tp.add_system_prompt(chat, "TOOLS")
    assert with_tools[0]["content"] == "sys\n\nTOOLS"
    assert tp.add_system_prompt(chat[1:], "TOOLS")[0] == {"role": "system", "content": "TOOLS"}


def test_unsupported_content_is_clear() -> None:
    with pytest.raises(TidalConfigError, match="Unsupported content block type 'image'"):
        tp.to_chat_dicts([HumanMessage([{"type": "image", "url": "http://x"}])])
