"""The post-processing vocabulary: which strings name a candidate (the one grammar).

Dependency-free so that the config (validation of a YAML / CLI value) and inference (applying a
stored choice) accept exactly the same strings; two grammars drift (one accepted ``near:inf``, the
other did not). The meaning of each candidate lives in ``inference/postprocess.py``.

    none | largest | part(+part)*      part = min-size:<mm^3> | near:<mm>, a plain decimal number
"""

from __future__ import annotations

import re

NONE = "none"
LARGEST = "largest"
MIN_SIZE_PREFIX = "min-size:"
NEAR_PREFIX = "near:"
# A plain decimal (no sign, exponent, inf or blank): a recorded choice reads back the same string.
_PART = r"(min-size|near):\d+(\.\d+)?"
SPEC_PATTERN = re.compile(rf"({NONE}|{LARGEST}|{_PART}(\+{_PART})*)")
SPEC_HELP = "none, largest, min-size:<mm^3>, near:<mm>, or near:<mm>+min-size:<mm^3>"


def check_spec(spec: str) -> str:
    """``spec`` if it names a candidate: none, largest, min-size:<mm^3>, near:<mm>, or a
    combination of the last two joined by ``+`` (a component is kept when every part keeps it)."""
    if isinstance(spec, str) and SPEC_PATTERN.fullmatch(spec):  # fullmatch: "$" would let a "\n" through
        return spec
    raise ValueError(f"unknown post-processing {spec!r} ({SPEC_HELP})")


def spec_parts(spec: str) -> list[tuple[str, float]]:
    """``near:20+min-size:100`` -> [("near:", 20.0), ("min-size:", 100.0)]; none / largest -> []."""
    spec = check_spec(spec)
    if spec in (NONE, LARGEST):
        return []
    out = []
    for part in spec.split("+"):
        prefix = MIN_SIZE_PREFIX if part.startswith(MIN_SIZE_PREFIX) else NEAR_PREFIX
        out.append((prefix, float(part[len(prefix):])))
    return out
