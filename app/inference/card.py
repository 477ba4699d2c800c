"""The model card (`model.json`): the one schema both the exporter and the server use.

The exporter (training/export.py) builds a `ModelCard` and writes it; the server's model
repository parses every `model.json` with it and refuses a version whose card is invalid.
docs/API.md ("The model repository") lists the required fields; the rest are ours.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Squash = Literal["tanh", "logistic2", "logistic4", "identity"]
OutputActivation = Literal["linear", "logistic", "softmax"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class Architecture(BaseModel):
    """Every knob of docs/MODEL.md; defaults are the lnsc ones."""

    model_config = ConfigDict(extra="forbid")

    input_size: int = Field(ge=1)
    output_size: int = Field(ge=1)
    blocks: int = Field(default=2, ge=1)
    cells_per_block: int = Field(default=1, ge=1)
    peepholes: bool = True
    forget_gate: bool = True
    gate_to_gate: bool = False
    input_to_output: bool = False
    bias_to_output: bool = True
    gate_to_output: bool = False
    g: Squash = "logistic2"
    h: Squash = "logistic2"
    output_activation: OutputActivation = "logistic"
    init_range: float = Field(default=0.1, gt=0)
    # Staggered negative input/output gate biases per block (the papers' trick): block j
    # gets -gate_bias_step * (j + 1). 0 disables it.
    gate_bias_step: float = 0.0
    # Initial forget-gate bias (positive keeps memory open early in training).
    forget_bias: float = 0.0

    @property
    def cells(self) -> int:
        return self.blocks * self.cells_per_block

    @property
    def plain(self) -> bool:
        """True when a layer is exactly the ONNX LSTM operator (with peepholes)."""
        return self.cells_per_block == 1 and not self.gate_to_gate and not self.gate_to_output


class StateTensor(BaseModel):
    """One state tensor of the graph: `input` feeds it, `output` returns it after the last step."""

    model_config = ConfigDict(extra="forbid")

    name: str
    input: str
    output: str
    shape: list[int]  # without the batch dimension


class TDCritic(BaseModel):
    """A frozen TD critic read out beside the network (the lnsc dopamine model, Rivest 2010).

    Per step t: xc(t) = [x[cs_input](t), clip01(o(t-1)), clip01(s(t-1))] (o: the network's
    output, s: its cell states), value V(t) = weights . xc(t), and the TD error
    delta(t) = x[reward_input](t) + gamma V(t) - V(t-1), 0 on a session's first step. The
    graph appends V and delta to y, so `output_names` ends with `outputs`; o(t-1), V(t-1) and
    the first-step flag travel as the extra state tensors of `state_layout`.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["td"] = "td"
    cs_input: int = Field(ge=0)
    reward_input: int = Field(ge=0)
    gamma: float
    weights: list[float]
    outputs: list[str] = Field(default_factory=lambda: ["value", "td_error"])

    @property
    def state(self) -> list[tuple[str, list[int]]]:
        return [("critic_prev_output", [1]), ("critic_prev_value", [1]), ("critic_started", [1])]


class Normalization(BaseModel):
    """Statistics baked into the graph (x in raw units in, y in raw units out); informative here."""

    input_mean: list[float]
    input_std: list[float]
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    # For each output, the input column whose raw value the graph adds to it: the network
    # predicts the change from that input's current value (e.g. a series' last value).
    target_offset_input: list[int] | None = None


class GraphFile(BaseModel):
    file: str
    sha256: str


class OnnxInfo(BaseModel):
    opset: int
    sha256: str  # of model.onnx
    lowering: Literal["lstm", "scan"] = "lstm"
    # Optional extra graphs with the same weights: "internals" (docs/API.md), "cuda"
    # (plain operators only, for the CUDA provider).
    internals: GraphFile | None = None
    cuda: GraphFile | None = None


class TrainingInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    task: str
    seed: int
    data: dict[str, Any]
    steps: int = 0
    wall_time_seconds: float = 0.0
    metrics: dict[str, Any] = Field(default_factory=dict)
    command: str = ""


class ModelCard(BaseModel):
    """model.json. Extra keys are kept (forward compatible), required ones are checked."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    task: str
    description: str = ""
    input_size: int = Field(ge=1)
    output_size: int = Field(ge=1)
    input_names: list[str]
    output_names: list[str]
    output_activation: OutputActivation
    architecture: Architecture
    state: list[StateTensor]
    normalization: Normalization | None = None
    # How inputs and outputs encode the task's symbols or quantities (e.g. Reber one-hot order).
    encoding: dict[str, Any] | None = None
    # Extra heads: a TD critic whose value and error follow the network's outputs in y.
    critic: TDCritic | None = None
    training: TrainingInfo
    onnx: OnnxInfo
    # How the exporter checked the graphs against the trained module (its rule and errors).
    verification: dict[str, Any] | None = None

    @field_validator("state")
    @classmethod
    def _unique_state_names(cls, v: list[StateTensor]) -> list[StateTensor]:
        if len({s.name for s in v}) != len(v):
            raise ValueError("state tensor names must be unique")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(self.input_names) != self.input_size:
            raise ValueError("input_names must have input_size entries")
        if len(self.output_names) != self.output_size:
            raise ValueError("output_names must have output_size entries")
        a = self.architecture
        heads = len(self.critic.outputs) if self.critic else 0
        if (a.input_size, a.output_size + heads) != (self.input_size, self.output_size):
            raise ValueError("architecture sizes disagree with input_size/output_size")
        if self.critic is not None:
            c = self.critic
            if max(c.cs_input, c.reward_input) >= self.input_size:
                raise ValueError("critic inputs must index the model's inputs")
            if len(c.weights) != 2 + a.cells or a.output_size != 1:
                raise ValueError("a TD critic reads one output and every cell: 2 + cells weights")
            if self.output_names[a.output_size :] != c.outputs:
                raise ValueError("output_names must end with the critic's outputs")
        if a.output_activation != self.output_activation:
            raise ValueError("architecture.output_activation disagrees with output_activation")
        return self

    def public(self) -> dict[str, Any]:
        """The card as served by GET /v1/models/{name} (without local file details)."""
        return self.model_dump(mode="json")


def state_layout(arch: Architecture, critic: TDCritic | None = None) -> list[StateTensor]:
    """The state tensors a network of this architecture (and critic) carries, in graph order."""
    names = [("cell_states", [arch.cells]), ("cell_outputs", [arch.cells])]
    if arch.gate_to_gate:
        names.append(("gates", [arch.blocks, 3]))
    if critic is not None:
        names += critic.state
    return [StateTensor(name=n, input=f"{n}_in", output=f"{n}_out", shape=s) for n, s in names]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
