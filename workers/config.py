"""Typed, validated worker configuration.

A workload declares its keys as a dict of ``Field``s. ``resolve`` checks a raw
JSON object against it and returns a plain dict with every key filled in, or
raises ``BadConfig`` with one line that names the key and says what to do.
Unknown keys are never ignored: a misspelling names the nearest valid key.
"""
import difflib

from .protocol import BadConfig

REQUIRED = object()


def _type_name(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Field(object):
    """One config key: its type, default and constraints.

    kind: "int", "float", "bool", "str" or "list_int".
    positive: the value must be > 0 (for sizes, counts, rates).
    minimum / maximum: inclusive bounds.
    choices: the allowed values for a string.
    nullable: null is allowed (and is then passed through as None).
    """

    def __init__(self, kind, default=REQUIRED, help="", positive=False, minimum=None,
                 maximum=None, choices=None, nullable=False):
        self.kind = kind
        self.default = default
        self.help = help
        self.positive = positive
        self.minimum = minimum
        self.maximum = maximum
        self.choices = tuple(choices) if choices is not None else None
        self.nullable = nullable

    def check(self, key, value):
        """Return the value converted to this field's type, or raise BadConfig."""
        if value is None:
            if self.nullable:
                return None
            raise BadConfig("config key '%s' must not be null; %s" % (key, self.expects()))
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise BadConfig("config key '%s' is %s; it must be true or false"
                                % (key, _type_name(value)))
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadConfig("config key '%s' is %s (%r); it must be an integer"
                                % (key, _type_name(value), value))
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadConfig("config key '%s' is %s (%r); it must be a number"
                                % (key, _type_name(value), value))
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise BadConfig("config key '%s' must be a finite number" % key)
        elif self.kind == "str":
            if not isinstance(value, str):
                raise BadConfig("config key '%s' is %s (%r); it must be a string"
                                % (key, _type_name(value), value))
            if self.choices is not None and value not in self.choices:
                near = difflib.get_close_matches(value, self.choices, n=1)
                hint = " (did you mean '%s'?)" % near[0] if near else ""
                raise BadConfig("config key '%s' is '%s'%s; choose one of: %s"
                                % (key, value, hint, ", ".join(self.choices)))
            return value
        elif self.kind == "list_int":
            if not isinstance(value, list) or not value or any(
                    isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise BadConfig("config key '%s' must be a non-empty list of integers" % key)
            for v in value:
                self._bounds(key, v)
            return list(value)
        else:  # a programming error in a schema, not user input
            raise ValueError("unknown field kind %r" % self.kind)
        self._bounds(key, value)
        return value

    def _bounds(self, key, value):
        if self.positive and not value > 0:
            raise BadConfig("config key '%s' is %r; it must be greater than 0" % (key, value))
        if self.minimum is not None and value < self.minimum:
            raise BadConfig("config key '%s' is %r; it must be at least %r"
                            % (key, value, self.minimum))
        if self.maximum is not None and value > self.maximum:
            raise BadConfig("config key '%s' is %r; it must be at most %r"
                            % (key, value, self.maximum))

    def expects(self):
        words = {"int": "an integer", "float": "a number", "bool": "true or false",
                 "str": "a string", "list_int": "a list of integers"}
        return "it must be %s" % words[self.kind]


def unknown_key_message(key, valid, where="config"):
    """One line for a key that is not in ``valid``, naming the nearest valid key."""
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    if near:
        return "%s key '%s' is unknown; did you mean '%s'?" % (where, key, near[0])
    return "%s key '%s' is unknown; valid keys: %s" % (where, key, ", ".join(sorted(valid)))


def resolve(schema, raw, where="config"):
    """Check ``raw`` against ``schema`` and return the full config with defaults.

    Raises BadConfig for a non-object, an unknown key, a missing required key,
    or a value of the wrong type or out of range.
    """
    if not isinstance(raw, dict):
        raise BadConfig("the %s must be a JSON object, not %s" % (where, _type_name(raw)))
    for key in raw:
        if key not in schema:
            raise BadConfig(unknown_key_message(key, schema, where))
    resolved = {}
    for key in sorted(schema):
        field = schema[key]
        if key in raw:
            resolved[key] = field.check(key, raw[key])
        elif field.default is REQUIRED:
            raise BadConfig("%s key '%s' is required; %s" % (where, key, field.expects()))
        else:
            resolved[key] = field.default
    return resolved


def describe(schema):
    """One line per key of ``schema``: name, type, default and allowed values (for --help)."""
    lines = []
    width = max([len(key) for key in schema] + [3])
    for key in sorted(schema):
        field = schema[key]
        if field.default is REQUIRED:
            default = "required"
        elif field.default is None:
            default = "null"
        else:
            default = "default %s" % (str(field.default).lower()
                                       if isinstance(field.default, bool) else field.default)
        notes = []
        if field.choices:
            notes.append("one of: %s" % ", ".join(field.choices))
        if field.positive:
            notes.append("> 0")
        if field.minimum is not None:
            notes.append(">= %s" % field.minimum)
        if field.maximum is not None:
            notes.append("<= %s" % field.maximum)
        if field.nullable and field.default is not None:
            notes.append("or null")
        text = "  %-*s  %-8s %s" % (width, key, field.kind, default)
        if notes:
            text += "; " + "; ".join(notes)
        if field.help:
            text += "  (%s)" % field.help
        lines.append(text)
    return "\n".join(lines)
