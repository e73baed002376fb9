"""Connexion's request validators: built once per schema, and answering where and what.

Connexion 3.3 deep-copies a parameter's schema and builds a new Draft4Validator
for every parameter of every request, and a new body validator per request
(about 13% of a request's CPU, measured with py-spy: bench/README.md). These
subclasses run the very same checks; the construction moves out of the request
path. Plugged in through ``add_api``'s ``validator_map``, Connexion's extension
point for this.

They also replace Connexion's error text. Connexion answers ``str(ValidationError)``
(the whole value sent, then the schema) or its ``message`` (the value again) and
logs it at INFO, so a 100 MB password came back in the 400 and went to the log.
Here every failure is a ``{"pointer", "detail"}`` pair (the pointer is
``/query/limit``, ``/path/id``, ``/body/<JSON pointer>``) whose detail says what
the field must be, quoting nothing the client sent beyond a short excerpt of a
property name; nothing is logged.
"""

from __future__ import annotations

import copy
import math
import typing as t
from typing import Any

from connexion.json_schema import Draft4RequestValidator
from connexion.lifecycle import ConnexionRequest
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, ParameterValidator
from connexion.validators.parameter import draft4_format_checker, is_null, is_nullable
from jsonschema import Draft4Validator, ValidationError

from cockpit_api.http.problems import InvalidRequest, excerpt

# id(parameter spec) -> (the spec, kept alive so its id stays unique; its validator)
_PARAMETERS: dict[int, tuple[dict[str, Any], Draft4Validator]] = {}

MAX_ERRORS = 20

FieldError = dict[str, str]


def _escape(token: object) -> str:
    """One RFC 6901 reference token (``~`` and ``/`` escaped), cut to an excerpt."""
    return excerpt(token).replace("~", "~0").replace("/", "~1")


def _pointer(prefix: str, path: t.Iterable[object]) -> str:
    return prefix + "".join(f"/{_escape(p)}" for p in path)


def _plural(n: object, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _describe(error: ValidationError) -> str:
    """What the value must be, from the failed keyword and the schema: never the value."""
    v = error.validator_value
    return {
        "maximum": lambda: f"must be at most {v}",
        "minimum": lambda: f"must be at least {v}",
        "exclusiveMaximum": lambda: f"must be less than {error.schema.get('maximum')}",
        "exclusiveMinimum": lambda: f"must be more than {error.schema.get('minimum')}",
        "maxLength": lambda: f"must be at most {_plural(v, 'character')} long",
        "minLength": lambda: "must not be empty" if v == 1 else
        f"must be at least {_plural(v, 'character')} long",
        "pattern": lambda: f"must match {v}",
        "enum": lambda: "must be one of: " + ", ".join(map(str, v)),
        "type": lambda: f"must be of type {v if isinstance(v, str) else ' or '.join(v)}",
        "format": lambda: f"must be a valid {v}",
        "maxItems": lambda: f"must hold at most {_plural(v, 'item')}",
        "minItems": lambda: f"must hold at least {_plural(v, 'item')}",
        "uniqueItems": lambda: "must not repeat an item",
        "multipleOf": lambda: f"must be a multiple of {v}",
        "anyOf": lambda: "must be " + _alternatives(v),
        "oneOf": lambda: ("must be exactly one of " if not error.context else "must be ")
        + _alternatives(v),
        "not": lambda: "is not allowed",
        "maxProperties": lambda: f"must hold at most {_plural(v, 'property')}",
        "minProperties": lambda: f"must hold at least {_plural(v, 'property')}",
    }.get(str(error.validator), lambda: f"is not valid ({error.validator})")()


_ARTICLES = {"string": "a string", "integer": "an integer", "number": "a number",
             "boolean": "a boolean", "array": "an array", "object": "an object"}


def _shape(schema: Any) -> str:
    """One branch of an anyOf/oneOf in words, from the schema alone (never the value)."""
    if not isinstance(schema, dict):
        return "a value"
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    kind = schema.get("type")
    words = schema.get("title") or _ARTICLES.get(str(kind), "a value")
    if kind == "object" and "title" not in schema and schema.get("required"):
        words += " with " + ", ".join(schema["required"])
    if "pattern" in schema:
        words += f" matching {schema['pattern']}"
    if kind is None and isinstance(schema.get("properties"), dict):
        # A branch that only constrains properties (`mode: fail` needs `operation: migrate`).
        fixed = [f"{name} is " + ("" if len(sub["enum"]) == 1 else "one of ")
                 + ", ".join(map(str, sub["enum"]))
                 for name, sub in schema["properties"].items()
                 if isinstance(sub, dict) and isinstance(sub.get("enum"), list)]
        if fixed:
            words = "an object whose " + " and ".join(fixed)
    return words


def _alternatives(branches: Any) -> str:
    shapes = [_shape(b) for b in branches] if isinstance(branches, list) else []
    if not shapes:
        return "one of the allowed shapes"
    return ", ".join(shapes[:-1]) + (" or " if len(shapes) > 1 else "") + shapes[-1]


def _fitting_branch(error: ValidationError) -> list[ValidationError]:
    """The errors inside the one branch whose type the value has, if only one has it:
    a scenario sent as an object is told what is wrong in the object."""
    branches = error.validator_value if isinstance(error.validator_value, list) else []
    misfits = {e.relative_schema_path[0] for e in error.context or ()
               if e.validator in ("type", "enum") and not e.relative_path
               and len(e.relative_schema_path) == 2}
    fitting = [i for i in range(len(branches)) if i not in misfits]
    if len(fitting) != 1 or len(branches) < 2:
        return []
    return [e for e in error.context or () if e.relative_schema_path[0] == fitting[0]]


def field_errors(error: ValidationError, prefix: str) -> list[FieldError]:
    """One ValidationError as pointer/detail pairs (required and extra properties name theirs).

    An anyOf/oneOf names the shapes it allows; when the value has the type of just one of
    them, what is wrong inside that one follows."""
    where = list(error.absolute_path)
    if error.validator in ("anyOf", "oneOf"):
        errors = [{"pointer": _pointer(prefix, where), "detail": _describe(error)}]
        for inner in _fitting_branch(error):
            errors += field_errors(inner, prefix)
        return errors
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [p for p in error.validator_value if p not in error.instance]
        return [{"pointer": _pointer(prefix, [*where, p]), "detail": "is required"}
                for p in missing]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = [p for p in error.instance if p not in known]
        return [{"pointer": _pointer(prefix, [*where, p]), "detail": "is not allowed"}
                for p in extra]
    return [{"pointer": _pointer(prefix, where), "detail": _describe(error)}]


def _all_errors(validator: Draft4Validator, value: Any, prefix: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path))):
        errors += field_errors(error, prefix)
        if len(errors) >= MAX_ERRORS:
            break
    return errors[:MAX_ERRORS]


def _non_finite(value: Any) -> bool:
    """A NaN or an infinity anywhere in a parsed parameter value.

    Connexion turns ``wait=nan`` into ``float("nan")``, which passes every
    ``minimum``/``maximum`` (each comparison with NaN is false), and ``1e400`` or
    ``inf`` into an infinity; neither is a number a client means.
    """
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    return False


def _parameter_validator(param: dict[str, Any]) -> Draft4Validator:
    entry = _PARAMETERS.get(id(param))
    if entry is None:
        schema = copy.deepcopy(param)
        schema = schema.get("schema", schema)
        entry = _PARAMETERS[id(param)] = (param, Draft4Validator(
            schema, format_checker=draft4_format_checker))
    return entry[1]


class CachedParameterValidator(ParameterValidator):
    def __init__(self, parameters: list[dict[str, Any]], *args: Any, **kwargs: Any) -> None:
        # Connexion 3.3's OpenAPIOperation appends the path item's parameters to the
        # operation's own list in place, once per middleware that loads the operation, so a
        # path parameter can be there several times: check each (in, name) once, or every
        # failure is reported once per copy.
        unique: dict[tuple[str, str], dict[str, Any]] = {}
        for p in parameters:
            unique.setdefault((p["in"], p["name"]), p)
        super().__init__(list(unique.values()), *args, **kwargs)

    def validate_query_parameter_list(self, request: Any,
                                      security_params: Any = None) -> set[str]:
        # Same set difference as Connexion's, without rebuilding the spec's names per request.
        names = self.__dict__.get("_query_names")
        if names is None:
            names = self.__dict__["_query_names"] = frozenset(
                p["name"] for p in self.parameters.get("query", []))
        extra = set(request.query_params.keys()) - names
        return extra.difference(security_params or ())

    def _check(self, where: str, param: dict[str, Any], value: Any) -> list[FieldError]:
        prefix = f"/{where}/{_escape(param['name'])}"
        if is_nullable(param) and is_null(value):
            return []
        if value is None:
            return [{"pointer": prefix, "detail": "is required"}] if param.get("required") else []
        if _non_finite(value):
            return [{"pointer": prefix, "detail": "must be a finite number"}]
        return _all_errors(_parameter_validator(param), value, prefix)

    def validate_request(self, request: ConnexionRequest) -> None:
        errors: list[FieldError] = []
        if self.strict_validation:
            extra = self.validate_query_parameter_list(
                request, security_params=self.security_query_params)
            errors += [{"pointer": f"/query/{_escape(name)}",
                        "detail": "is not a parameter of this operation"}
                       for name in sorted(extra)]
        sources = {
            "query": lambda p: request.query_params.get(p["name"]),
            "path": lambda p: request.path_params.get(p["name"].replace("-", "_")),
            "header": lambda p: request.headers.get(p["name"]),
            "cookie": lambda p: request.cookies.get(p["name"]),
        }
        for where, value_of in sources.items():
            for param in self.parameters.get(where, []):
                errors += self._check(where, param, value_of(param))
        if errors:
            raise InvalidRequest(errors[:MAX_ERRORS])


class CachedJSONBodyValidator(JSONRequestBodyValidator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._built = Draft4RequestValidator(self._schema,
                                             format_checker=Draft4Validator.FORMAT_CHECKER)

    @property
    def _validator(self) -> Any:
        return self._built

    def _validate(self, body: Any) -> dict[str, Any] | None:
        if not self._nullable and body is None:
            raise InvalidRequest([{"pointer": "/body", "detail": "is required"}])
        errors = _all_errors(self._built, body, "/body")
        if errors:
            raise InvalidRequest(errors)
        return None


def validator_map() -> dict[str, Any]:
    body = copy.copy(VALIDATOR_MAP["body"])
    body["*/*json"] = CachedJSONBodyValidator
    return {**VALIDATOR_MAP, "parameter": CachedParameterValidator, "body": body}
