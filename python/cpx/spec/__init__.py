"""The spec language: pydantic schema, YAML loading with positions, SpecError with locations."""

from cpx.spec._errors import Issue, Location, SpecError
from cpx.spec._checks import axis_phase, unread_layers
from cpx.spec._load import Loaded, load_spec
from cpx.spec._schema import Arm, Phase, Spec
from cpx.spec._yaml import dotted


def json_schema() -> dict:
    """A JSON Schema of the spec, for editors (yaml-language-server) and `cpx schema`."""
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cpx experiment spec"
    props = schema.setdefault("properties", {})
    # Top-level `x-*` keys hold YAML anchors for reuse (`x-lora: &lora {...}`).
    schema["patternProperties"] = {"^x-": {}}
    props.setdefault("extends", {"type": "string"})
    return schema


__all__ = [
    "Arm",
    "Issue",
    "Loaded",
    "Location",
    "Phase",
    "Spec",
    "SpecError",
    "axis_phase",
    "dotted",
    "json_schema",
    "load_spec",
    "unread_layers",
]
