"""How much work a JSON body would be to parse, told from its raw bytes without parsing it.

Parsing costs per container and per item, not per byte: 25 MB of nested empty arrays (`[[],[],...]`)
took 8 s and 640 MB to parse, 22 MB of stroke points 1.5 GB, both within the byte limit. A base64
photo holds no bracket, comma or backslash, so counting those outside strings is cheap (a few C-speed
passes over the bytes) and bounds what a parse would build: containers (`{` and `[`), items (`,`)
and nesting depth (Python's parser recurses once per level).
"""

from __future__ import annotations

import itertools
import re

_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # an escaped character inside a string: \" \\ \n \uXXXX's \u
_STRING = re.compile(rb'"[^"]*"')  # once escapes are gone, a quote always opens or closes a string
_STRUCTURE = b'[]{}",'
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in _STRUCTURE)
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_shape_problem(body: bytes, max_containers: int, max_items: int, max_depth: int) -> str | None:
    """Why the body is too costly to parse (a message for the caller), or None.

    Broken JSON passes: the parser then refuses it (422) at the cost of the bytes it read."""
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    structure = _STRING.sub(b"", body.translate(None, _NOT_STRUCTURE))
    containers = structure.count(b"{") + structure.count(b"[")
    if containers > max_containers:
        return f"request body has more than {max_containers} JSON objects and arrays (points, strokes); send fewer"
    if structure.count(b",") + 1 > max_items:
        return f"request body has more than {max_items} JSON items (values in arrays and objects); send fewer"
    brackets = structure.translate(None, b'",')
    depth = max(itertools.accumulate(_DEPTH_STEP[c] for c in brackets), default=0)
    if depth > max_depth:
        return f"request body nests JSON more than {max_depth} levels deep"
    return None
