"""The task catalogue (``qrunner tasks``): every registered task with its queue, retry policy,
rate limit and payload JSON Schema (from its pydantic model), and a valid example payload built
from that schema (``qrunner tasks NAME --example``).

The example holds the required fields only (optional ones keep their defaults), each built from
its schema: ``examples`` or ``const`` / ``enum`` when the model gives them, else a value of the
type that meets the constraints (lengths, bounds, a string's ``pattern``, sampled by walking the
regular expression's parse tree). It is checked against the model before it is shown.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from .task import Registry, Task

#: The re module's own parser (``re._parser`` since Python 3.11; not in the type stubs).
sre_parse: Any = importlib.import_module("re._parser")

_CATEGORY_SAMPLES = {
    "CATEGORY_DIGIT": "7",
    "CATEGORY_WORD": "a",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_NOT_WORD": "-",
    "CATEGORY_NOT_SPACE": "a",
}


def describe(task: Task) -> dict[str, Any]:
    """A task's declaration as plain data."""
    limit = task.rate_limit
    return {
        "name": task.name,
        "queue": task.queue,
        "retries": {
            "max_retries": task.max_retries,
            "backoff_base_s": task.backoff_base_s,
            "backoff_cap_s": task.backoff_cap_s,
            "jitter": task.jitter,
            "max_deliveries": task.max_deliveries,
        },
        "timeout_s": task.timeout_s,
        "rate_limit": None
        if limit is None
        else {"rates": list(limit.rates), "burst": limit.burst, "per_key": limit.key is not None},
        "run_in_thread": task.run_in_thread,
        "payload_schema": payload_schema(task),
    }


def payload_schema(task: Task) -> dict[str, Any]:
    if task.payload_model is None:
        return {"type": "object"}
    schema: dict[str, Any] = task.payload_model.model_json_schema()
    return schema


def catalogue(registry: Registry) -> list[dict[str, Any]]:
    return [describe(registry.get(name)) for name in registry.names]


def example(task: Task) -> dict[str, Any]:
    """A payload the task accepts; raises :class:`~qrunner.errors.InvalidPayload` naming what
    does not fit when none could be built."""
    schema = payload_schema(task)
    value = _sample(schema, schema)
    if not isinstance(value, dict):
        value = {}
    task.validate(value)  # raises InvalidPayload naming what does not fit
    return value


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target: dict[str, Any] = root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
        return target
    return node


def _sample(node: dict[str, Any], root: dict[str, Any]) -> Any:
    node = _resolve(node, root)
    if node.get("examples"):
        return node["examples"][0]
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return node["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in node.get(key, []) if _resolve(o, root).get("type") != "null"]
        if options:
            return _sample(options[0], root)
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        props = node.get("properties", {})
        return {name: _sample(props[name], root) for name in node.get("required", [])}
    if kind == "array":
        count = max(1, int(node.get("minItems", 1)))
        return [_sample(node.get("items", {}), root) for _ in range(count)]
    if kind == "integer":
        return _number(node, 1, integer=True)
    if kind == "number":
        return _number(node, 1.5, integer=False)
    if kind == "boolean":
        return True
    if kind == "string":
        return _string(node)
    return None


def _number(node: dict[str, Any], default: float, *, integer: bool) -> Any:
    value = default
    if "minimum" in node:
        value = max(value, node["minimum"])
    if "exclusiveMinimum" in node:
        value = max(value, node["exclusiveMinimum"] + 1)
    if "maximum" in node:
        value = min(value, node["maximum"])
    if "exclusiveMaximum" in node:
        value = min(value, node["exclusiveMaximum"] - 1)
    return int(value) if integer else value


_FORMATS = {
    "date": "2026-12-01",
    "date-time": "2026-12-01T09:00:00Z",
    "time": "09:00:00",
    "email": "someone@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
}


def _string(node: dict[str, Any]) -> str:
    if node.get("format") in _FORMATS:
        return _FORMATS[node["format"]]
    pattern = node.get("pattern")
    low = int(node.get("minLength", 0))
    if isinstance(pattern, str):
        sampled = sample_pattern(pattern)
        if sampled is not None and len(sampled) < low:  # e.g. [!-~]+ with a minimum length
            longer = sampled + sampled[-1:] * (low - len(sampled))
            sampled = longer if re.search(pattern, longer) else None
        if sampled is not None:
            return sampled
    text = "example"
    high = node.get("maxLength")
    if len(text) < low:
        text = text + "x" * (low - len(text))
    if high is not None:
        text = text[: int(high)]
    return text


def sample_pattern(pattern: str) -> str | None:
    """A string matching ``pattern``, or None when the pattern is beyond this sampler."""
    try:
        tree = sre_parse.parse(pattern)
        text = _walk(tree)
    except (re.error, ValueError, KeyError, TypeError):
        return None
    return text if re.search(pattern, text) else None


def _walk(tree: Any) -> str:
    out = []
    for op, arg in tree:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_pick_in(arg))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _high, sub = arg
            out.append(_walk(sub) * max(1, int(low)) if low else _walk(sub))
        elif name == "SUBPATTERN":
            out.append(_walk(arg[-1]))
        elif name == "BRANCH":
            out.append(_walk(arg[1][0]))
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue
        else:
            raise ValueError(name)
    return "".join(out)


def _pick_in(items: Any) -> str:
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            return "a"
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return _CATEGORY_SAMPLES.get(str(arg), "a")
    raise ValueError("empty set")
