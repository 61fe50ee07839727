"""Tool calling for any model through grammar-constrained JSON.

Small models rarely emit parseable tool calls on their own (0/12 free-form,
12/12 valid with a JSON-schema grammar: docs/design-notes.md, 'Tool calls from a
small model'), and many chat templates do not render tools at all. So every
model gets the same protocol: the bound tools are described in a system message,
and the reply is decoded under a JSON schema that only admits

    {"name": "<tool>", "arguments": {...}}             one tool call
    {"tool_calls": [{"name": ..., "arguments": ...}]}  parallel calls (if allowed)
    {"answer": "<text>"}                               a plain answer (tool_choice="auto")

Assistant turns in the history are rendered back in the same JSON, so the model
sees its own protocol.
"""

from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.utils.function_calling import convert_to_openai_tool

from tidal_agents.engine.types import GuidedDecoding, check_json_schema
from tidal_agents.errors import TidalConfigError

ToolMode = Literal["auto", "required", "none", "named"]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolMode
    name: str | None = None


def to_tool_specs(tools: list[Any], strict: bool | None = None) -> list[ToolSpec]:
    """Convert LangChain tools / pydantic models / functions / dicts; validate schemas."""
    if not isinstance(tools, (list, tuple)):
        raise TidalConfigError(
            f"tools={tools!r}: allowed is a list of BaseTools, functions, pydantic models "
            "or OpenAI tool dicts."
        )
    specs: list[ToolSpec] = []
    for tool in tools:
        try:
            fn = convert_to_openai_tool(tool, strict=strict)["function"]
        except Exception as exc:
            raise TidalConfigError(
                f"Cannot convert tool {tool!r} to a tool schema: {exc}. Pass a BaseTool, "
                "a function with a docstring, a pydantic model or an OpenAI tool dict."
            ) from exc
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise TidalConfigError(f"Tool {tool!r} has no name.")
        check_text(f"Tool {name!r}: name", name)
        description = fn.get("description", "")
        if not isinstance(description, str):
            raise TidalConfigError(
                f"Tool {name!r}: description={description!r}; allowed is a string."
            )
        check_text(f"Tool {name!r}: description", description)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        try:
            check_json_schema(params)
        except TidalConfigError as exc:
            raise TidalConfigError(f"Tool {name!r} has an invalid parameter schema: {exc}") from exc
        if params.get("type", "object") != "object":
            raise TidalConfigError(
                f"Tool {name!r}: parameters must be a JSON object schema, got type "
                f"{params.get('type')!r}."
            )
        # Closed objects, as OpenAI's strict mode does: the grammar then ends the
        # arguments once the declared ones are written (a small model otherwise
        # invents properties or whitespace until max_tokens).
        params = {"additionalProperties": False, **params}
        spec = ToolSpec(name, description, params)
        same = next((s for s in specs if s.name == name), None)
        if same is None:
            specs.append(spec)
        elif same != spec:
            # The same tool passed in two forms (e.g. a pydantic class and its JSON
            # schema) differs in details; the first one bound wins.
            warnings.warn(
                f"Two tools are named {name!r}; using the first one bound.", stacklevel=3
            )
    return specs


def parse_tool_choice(tool_choice: Any, specs: list[ToolSpec]) -> ToolChoice:
    """Map LangChain / OpenAI tool_choice values to a ToolChoice."""
    names = [s.name for s in specs]
    allowed = "'auto', 'any', 'required', 'none', True, a tool name, or {'type': 'function', " \
        "'function': {'name': ...}}"
    if tool_choice is None or tool_choice == "auto":
        return ToolChoice("auto")
    if tool_choice in ("any", "required") or tool_choice is True:
        return ToolChoice("required")
    if tool_choice == "none" or tool_choice is False:
        return ToolChoice("none")
    name: Any = tool_choice
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(name, str):
        if name not in names:
            raise TidalConfigError(
                f"tool_choice names {name!r}, which is not a bound tool; bound tools: {names}."
            )
        return ToolChoice("named", name)
    raise TidalConfigError(f"tool_choice={tool_choice!r} is not supported; allowed: {allowed}.")


_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def _call_schema(spec: ToolSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": spec.name}, "arguments": spec.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def reply_grammar(
    specs: list[ToolSpec], choice: ToolChoice, parallel: bool
) -> GuidedDecoding | None:
    """The JSON schema a reply must follow, or None for free text.

    With tools bound and tool_choice "none" the reply must be an answer; it is
    still decoded in the protocol's JSON ({"answer": ...}), because the history
    shows the model's earlier turns as JSON calls and a small model asked for
    free text there imitates them or rambles (measured in docs/evaluation.md).
    """
    if not specs:
        return None
    if choice.mode == "none":
        return answer_grammar()
    callable_specs = [s for s in specs if choice.mode != "named" or s.name == choice.name]
    calls = [_call_schema(s) for s in callable_specs]
    one_call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    options: list[dict[str, Any]] = [one_call]
    if parallel and choice.mode != "named":
        options.append(
            {
                "type": "object",
                "properties": {"tool_calls": {"type": "array", "items": one_call, "minItems": 1}},
                "required": ["tool_calls"],
                "additionalProperties": False,
            }
        )
    if choice.mode == "auto":
        options.append(_ANSWER_SCHEMA)
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return GuidedDecoding(json_schema=schema)


def answer_grammar() -> GuidedDecoding:
    """Admits only {"answer": "..."}: used when a step must answer, not call."""
    return GuidedDecoding(json_schema=_ANSWER_SCHEMA)


def schema_system_prompt(schema: dict[str, Any]) -> str:
    """Describe a structured-output schema, so the model knows what each field is for."""
    props = schema.get("properties") or {}
    if not props:
        return "Reply with a JSON object only."
    lines = ["Reply with a JSON object with these fields:"]
    for key, sub in props.items():
        desc = sub.get("description") or sub.get("title") or ""
        lines.append(f"- {key} ({sub.get('type', 'any')}): {desc}".rstrip(": "))
    return "\n".join(lines)


def tools_system_prompt(specs: list[ToolSpec], choice: ToolChoice, parallel: bool) -> str:
    lines = ["You can call these tools:"]
    for s in specs:
        args = ", ".join(
            f"{k}: {v.get('type', 'any')}" for k, v in s.parameters.get("properties", {}).items()
        )
        lines.append(f"- {s.name}({args}): {s.description}".rstrip(": "))
    lines.append("")
    lines.append('To call a tool, reply with JSON: {"name": "<tool name>", "arguments": {...}}.')
    if parallel:
        lines.append(
            'To call several tools at once: {"tool_calls": [{"name": ..., "arguments": ...}]}.'
        )
    if choice.mode in ("auto", "none"):
        lines.append(
            'When a tool result answers the question, reply with JSON: {"answer": "<your answer>"}.'
        )
    if choice.mode == "none":
        lines.append("Do not call a tool now: answer.")
    elif choice.mode == "named":
        lines.append(f"Call the tool {choice.name}.")
    else:
        lines.append("You must call a tool.")
    return "\n".join(lines)


# ------------------------------------------------------------------ messages
def check_text(where: str, text: str) -> None:
    """Raise TidalConfigError when `text` is not valid Unicode (a lone UTF-16
    surrogate such as '\\ud800', e.g. from JSON escapes or surrogateescape-decoded
    bytes): the tokenizer cannot encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TidalConfigError(
            f"{where} contains a lone UTF-16 surrogate {text[exc.start]!r} at character "
            f"{exc.start}, which is not valid Unicode and cannot be tokenized; allowed is "
            "valid Unicode text (decode bytes with errors='replace' to keep the rest)."
        ) from None


def _text(content: Any) -> str:
    """Flatten LangChain message content (str or a list of blocks) to text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                kind = block.get("type")
                if kind == "text":
                    parts.append(str(block.get("text", "")))
                elif kind in ("tool_use", "tool_call", "reasoning", "thinking"):
                    continue  # rendered from tool_calls instead
                else:
                    raise TidalConfigError(
                        f"Unsupported content block type {kind!r}: this model takes text only "
                        "(allowed: plain strings and 'text' blocks)."
                    )
        return "".join(parts)
    raise TidalConfigError(f"Unsupported message content of type {type(content).__name__}.")


def render_ai_message(msg: AIMessage) -> str:
    if msg.tool_calls:
        calls = [{"name": c["name"], "arguments": c["args"]} for c in msg.tool_calls]
        payload: dict[str, Any] = calls[0] if len(calls) == 1 else {"tool_calls": calls}
        return json.dumps(payload, ensure_ascii=False)
    return _text(msg.content)


def render_tool_result(text: str, call: dict[str, Any] | None, error: bool) -> str:
    """A tool message's content, said together with the call it answers.

    A bare "287.0" in a tool turn is easily mistaken for context by a small
    model, which then repeats the question's numbers; naming the call that
    produced it ("The result of multiply(a=41, b=7) is 287.0.") made the
    embedded model state the result after one call on 20 of 24 tasks, against
    9 of 24 with the bare value (docs/evaluation.md, bench episodes).
    """
    if call is None:
        return f"{text} (error)" if error else text
    args = ", ".join(
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in (call.get("args") or {}).items()
    )
    signature = f"{call.get('name', 'tool')}({args})"
    if error:
        return f"The call {signature} failed (error): {text}"
    end = "" if text.rstrip().endswith((".", "!", "?", "}", "]")) else "."
    return f"The result of {signature} is {text}{end}"


def to_chat_dicts(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> chat-template dicts ({"role", "content"})."""
    out: list[dict[str, Any]] = []
    calls: dict[str, dict[str, Any]] = {}  # tool_call_id -> the call, for its result
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text(m.content)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text(m.content)})
        elif isinstance(m, AIMessage):
            out.append({"role": "assistant", "content": render_ai_message(m)})
            for c in m.tool_calls or ():
                if c.get("id"):
                    calls[str(c["id"])] = dict(c)
        elif isinstance(m, ToolMessage):
            error = getattr(m, "status", "success") == "error"
            call = calls.get(m.tool_call_id) if isinstance(m.tool_call_id, str) else None
            content = render_tool_result(_text(m.content), call, error)
            out.append({"role": "tool", "content": content})
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _text(m.content)})
        else:
            raise TidalConfigError(
                f"Unsupported message type {type(m).__name__}; allowed: SystemMessage, "
                "HumanMessage, AIMessage, ToolMessage, ChatMessage."
            )
        check_text(f"messages[{len(out) - 1}] ({out[-1]['role']})", out[-1]["content"])
    return out


def add_system_prompt(chat: list[dict[str, Any]], tools_prompt: str) -> list[dict[str, Any]]:
    """Append to the (first) system message, or add one."""
    if chat and chat[0]["role"] == "system":
        merged = chat[0]["content"] + "\n\n" + tools_prompt
        return [{"role": "system", "content": merged}, *chat[1:]]
    return [{"role": "system", "content": tools_prompt}, *chat]


# ------------------------------------------------------------------- replies
@dataclass(frozen=True)
class ParsedReply:
    content: str
    tool_calls: list[dict[str, Any]]
    #: text that should have been a call but did not parse (cut short by max_tokens)
    invalid: str | None = None


def parse_reply(
    text: str, grammar_used: bool, tools: list[ToolSpec] | None = None
) -> ParsedReply:
    """Turn a grammar-decoded reply into content and LangChain tool calls.

    Only a reply decoded under the tool grammar (`grammar_used`) can hold calls:
    free text that merely looks like a call (prompt injection, a model imitating
    markup) stays content. With `tools`, a call must also name one of them and
    carry arguments valid against its schema (defence in depth should a backend
    not enforce the grammar); anything else is no call, kept as `invalid` and never
    returned as content (a half-written call is not an answer).
    Never raises on any text.
    """
    if not isinstance(text, str):
        raise TidalConfigError(f"reply text must be a str, got {type(text).__name__}.")
    if not grammar_used:
        return ParsedReply(text, [])
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        # Cut short mid-JSON (max_tokens or deadline): an answer keeps what was
        # written of it; a half-written call is no call.
        from langchain_core.utils.json import parse_partial_json

        try:
            partial = parse_partial_json(text)
        except (ValueError, TypeError, RecursionError):
            partial = None
        if isinstance(partial, dict) and isinstance(partial.get("answer"), str):
            return ParsedReply(partial["answer"], [], invalid=text)
        return ParsedReply("", [], invalid=text)
    if isinstance(obj, dict) and "answer" in obj and isinstance(obj["answer"], str):
        return ParsedReply(obj["answer"], [])
    raw_calls = obj.get("tool_calls") if isinstance(obj, dict) and "tool_calls" in obj else [obj]
    if not isinstance(raw_calls, list):
        return ParsedReply("", [], invalid=text)
    by_name = {s.name: s for s in tools} if tools is not None else None
    calls = []
    for c in raw_calls:
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            raw_args = c.get("arguments")
            args: dict[str, Any] = raw_args if isinstance(raw_args, dict) else {}
            if by_name is not None and not _valid_call(by_name, c["name"], args):
                return ParsedReply("", [], invalid=text)
            calls.append(
                {"name": c["name"], "args": args, "id": f"call_{uuid.uuid4().hex[:24]}",
                 "type": "tool_call"}
            )
    if not calls:
        return ParsedReply("", [], invalid=text)
    return ParsedReply("", calls)


def _valid_call(by_name: dict[str, ToolSpec], name: str, args: dict[str, Any]) -> bool:
    spec = by_name.get(name)
    if spec is None:
        return False
    import jsonschema

    try:
        return bool(jsonschema.Draft202012Validator(spec.parameters).is_valid(args))
    except (jsonschema.exceptions.JSONSchemaException, RecursionError):
        return False
