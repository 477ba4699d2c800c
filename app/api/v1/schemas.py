"""Request and response models of the native API (docs/API.md).

Numeric payloads (`inputs`, `state`) are typed `Any` for parsing, with their real JSON
schema attached for /docs: pydantic would check millions of floats one by one, while
app/api/v1/codec.py checks them in bulk with numpy. Everything else is validated strictly here
(`true` is not 1, `"1"` is not 1). Responses are written by orjson directly; these models
document them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, WithJsonSchema

from app.dataplane import MAX_OFFSET

# What validation accepts, in JSON Schema: finite float32 numbers, no empty sequence or step.
# (The widths and state shapes depend on the model; the batch and step limits and the TTL
# range on the settings: `limits_in_schema` writes those in when the app is built.)
FLOAT32_MAX = 3.4028234e38
_NUMBER = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
_STEP = {"type": "array", "items": _NUMBER, "minItems": 1}
_NUMBER_ROWS = {"type": "array", "items": _STEP, "minItems": 1}
_NESTED = {
    "type": "array",
    "items": {"anyOf": [_NUMBER, {"type": "array"}]},
    "minItems": 1,
}
_STATE = {
    "type": "object",
    "additionalProperties": _NESTED,
    "description": "{<state name>: nested list of the card's shape}, no batch dimension",
    "example": {"cell_states": [0.1, -0.2], "cell_outputs": [0.05, -0.1]},
}

Batch = Annotated[
    Any,
    WithJsonSchema(
        {
            "type": "array",
            "items": _NUMBER_ROWS,
            "minItems": 1,
            "description": "[batch][time][input_size]; sequences may differ in length",
        }
    ),
]
Steps = Annotated[
    Any,
    WithJsonSchema({**_NUMBER_ROWS, "minItems": 1, "description": "[time][input_size]"}),
]
StateIn = Annotated[Any, WithJsonSchema({"anyOf": [_STATE, {"type": "null"}]})]
BatchStateIn = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"anyOf": [_STATE, {"type": "null"}]}},
                {"type": "null"},
            ],
            "description": "one start state per sequence (null: zeros)",
        }
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSummary(BaseModel):
    name: str
    versions: list[int]
    default_version: int


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelPublic(BaseModel):
    """The public model card plus the version and the execution provider in use."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: int
    provider: str = Field(examples=["CPUExecutionProvider"])
    task: str
    input_size: int
    output_size: int
    input_names: list[str]
    output_names: list[str]
    output_activation: str
    architecture: dict[str, Any]
    state: list[dict[str, Any]]
    training: dict[str, Any]
    onnx: dict[str, Any]


# -- prediction --------------------------------------------------------------------------


class PredictRequest(_Request):
    """A batch of sequences; each gets its own outputs and final state, as if run alone."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"inputs": [[[0.1], [0.2], [0.3]], [[0.5]]], "return_sequences": True},
                {"inputs": [[[0.1], [0.2]]], "return_sequences": False, "return_state": True},
            ]
        },
    )

    inputs: Batch
    return_sequences: StrictBool = True
    state: BatchStateIn = None
    return_state: StrictBool = False
    return_internals: StrictBool = False


class GateTraces(BaseModel):
    input: list[list[float]]
    forget: list[list[float]]
    output: list[list[float]]


class Internals(BaseModel):
    """Per step: cell states and outputs [time][cells]; gate activations [time][blocks]."""

    cell_states: list[list[float]]
    cell_outputs: list[list[float]]
    gates: GateTraces


class PredictResponse(BaseModel):
    model: str
    version: int
    outputs: list[list[list[float]] | list[float]] = Field(
        description="[batch][time][output_size], or [batch][output_size] without return_sequences"
    )
    state: list[dict[str, Any]] | None = None
    internals: list[Internals] | None = None


# -- sessions ----------------------------------------------------------------------------


class SessionCreate(_Request):
    """Open a session on a model version; `state` (+ `offset`) restores an exported one."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"model": "mackey-glass", "ttl_seconds": 600}],
            # an offset only restores a state: with an offset, a state is required
            "if": {"required": ["offset"], "properties": {"offset": {"type": "integer"}}},
            "then": {"required": ["state"], "properties": {"state": {"type": "object"}}},
        },
    )

    model: str = Field(min_length=1, max_length=64)
    version: StrictInt | None = Field(default=None, ge=1)
    state: StateIn = None
    offset: StrictInt | None = Field(default=None, ge=0, le=MAX_OFFSET)
    ttl_seconds: StrictInt | None = Field(default=None, ge=1)


class SessionPublic(BaseModel):
    session_id: str
    model: str
    version: int
    offset: int
    created_at: str = Field(examples=["2024-05-01T12:00:00.000Z"])
    expires_at: str = Field(examples=["2024-05-01T13:00:00.000Z"])
    ttl_seconds: int


class StepRequest(_Request):
    """One chunk of steps. `offset`: where the client believes the session stands."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"inputs": [[0.1], [0.2]], "offset": 0}]},
    )

    inputs: Steps
    offset: StrictInt | None = Field(default=None, ge=0, le=MAX_OFFSET)
    return_internals: StrictBool = False


class StepResponse(BaseModel):
    session_id: str
    offset: int
    outputs: list[list[float]]
    internals: Internals | None = None


class MigrateRequest(_Request):
    """The version of the session's model to move to (its state layout must match)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"version": 2}]}
    )

    version: StrictInt = Field(ge=1)


class SessionState(BaseModel):
    session_id: str
    model: str
    version: int
    offset: int
    state: dict[str, Any]


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON body that the route parses itself (fast path)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


def limits_in_schema(schema: dict[str, Any], max_batch: int, max_steps: int, max_ttl: int) -> None:
    """Write the limits of the settings into the request bodies of an OpenAPI schema."""
    for item in schema.get("paths", {}).values():
        for op in item.values():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            model = body.get("schema", {})
            props = model.get("properties", {})
            if model.get("title") == "PredictRequest":
                props["inputs"] = {**props["inputs"], "maxItems": max_batch}
                props["inputs"]["items"] = {**props["inputs"]["items"], "maxItems": max_steps}
            elif model.get("title") == "StepRequest":
                props["inputs"] = {**props["inputs"], "maxItems": max_steps}
            elif model.get("title") == "SessionCreate":
                ttl = props["ttl_seconds"]
                ttl["anyOf"] = [
                    {**t, "maximum": max_ttl} if t.get("type") == "integer" else t
                    for t in ttl.get("anyOf", [])
                ]
