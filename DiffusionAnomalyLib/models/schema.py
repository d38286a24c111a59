"""Check ``model.json`` against ``model.schema.json`` without a JSON Schema package.

Only the keywords the bundle schema uses are understood: ``type`` (one name or a list), ``enum``,
``required``, ``properties``, ``additionalProperties`` (true/false or a schema), ``items``, ``minimum``,
``exclusiveMinimum``, ``maximum``,
``minLength`` and ``minItems``. Any other keyword is ignored (``description``, ``title``, ...). Standard
library only, so the Slicer panel can list and check bundles in Slicer's own Python.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from DiffusionAnomalyLib.errors import BundleError

SCHEMA_PATH = Path(__file__).resolve().parent / "model.schema.json"

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


@lru_cache(maxsize=1)
def model_schema() -> dict:
    """The bundle schema shipped with the library."""
    return json.loads(SCHEMA_PATH.read_text())


def problems(value: Any, schema: dict, where: str = "") -> list[str]:
    """Every way ``value`` breaks ``schema``, as "field: problem" strings (empty when it conforms)."""
    name = where or "(top level)"
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            return [f"{name}: expected {' or '.join(types)}, got {type(value).__name__} {value!r:.60}"]
    found = []
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{name}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        found.append(f"{name}: {value} is below the minimum {schema['minimum']}")
    if "exclusiveMinimum" in schema and _TYPES["number"](value) and value <= schema["exclusiveMinimum"]:
        found.append(f"{name}: {value} is not above {schema['exclusiveMinimum']}")
    if "maximum" in schema and _TYPES["number"](value) and value > schema["maximum"]:
        found.append(f"{name}: {value} is above the maximum {schema['maximum']}")
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        found.append(f"{name}: shorter than {schema['minLength']} character(s)")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            found.append(f"{name}: needs at least {schema['minItems']} item(s)")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                found += problems(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                found.append(f"{_join(where, key)}: required field missing")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                found += problems(item, props[key], _join(where, key))
            elif extra is False:
                found.append(f"{_join(where, key)}: unknown field")
            elif isinstance(extra, dict):
                found += problems(item, extra, _join(where, key))
    return found


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_model_json(data: Any, source: str = "model.json") -> None:
    """Raise :class:`~DiffusionAnomalyLib.errors.BundleError` naming ``source`` and each bad field."""
    found = problems(data, model_schema())
    if found:
        raise BundleError(f"{source}: does not match the bundle schema ({SCHEMA_PATH.name}): " + "; ".join(found))
