"""Values across the sandbox boundary: JSON with type tags, decodable without running anything.

The sandboxed candidate returns values that trusted test code then compares. Decoding only ever builds
None, bool, int, float, complex, str, bytes, list, tuple, dict and set (and frozenset), so an untrusted
process can influence *which* value comes back, never *what code* runs. This module is plain standard
library: its source is also sent into the sandbox, which runs without grpo_jax installed.
"""

import json

_MAX_DEPTH = 100


def encode(value, depth=0):
    """A JSON-able form of ``value``; TypeError for anything that is not plain data."""
    if depth > _MAX_DEPTH:
        raise TypeError("value nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        # hexadecimal: decimal str() and int() refuse more than 4,300 digits (and take quadratic time)
        return value if abs(value) < 2**53 else {"h": hex(value)}
    if isinstance(value, float):
        return {"f": repr(value)}
    if isinstance(value, complex):
        return {"c": [repr(value.real), repr(value.imag)]}
    if isinstance(value, bytes):
        return {"b": value.hex()}
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"t": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"s" if isinstance(value, set) else "fs": [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise TypeError("cannot send a value of type " + type(value).__name__ + " across the sandbox boundary")


def decode(data, depth=0):
    """Inverse of ``encode``; ValueError on anything malformed."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, list):
        return [decode(v, depth + 1) for v in data]
    if isinstance(data, dict) and len(data) == 1:
        (tag, body), = data.items()
        if tag == "h" and isinstance(body, str):
            return int(body, 16)
        if tag == "f" and isinstance(body, str):
            return float(body)
        if tag == "c" and isinstance(body, list) and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
        if tag == "b" and isinstance(body, str):
            return bytes.fromhex(body)
        if tag == "t" and isinstance(body, list):
            return tuple(decode(v, depth + 1) for v in body)
        if tag == "s" and isinstance(body, list):
            return set(decode(v, depth + 1) for v in body)
        if tag == "fs" and isinstance(body, list):
            return frozenset(decode(v, depth + 1) for v in body)
        if tag == "d" and isinstance(body, list):
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    raise ValueError("malformed value from the sandbox")


def dumps(value):
    return json.dumps(encode(value), separators=(",", ":"))


def loads(text):
    return decode(json.loads(text))
