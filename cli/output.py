"""How every `cxr` command prints its result: one JSON line with `--json`, text otherwise."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, default=str, allow_nan=False, separators=(",", ":")))


def show(result: dict[str, Any], as_json: bool, print_text: Callable[[dict[str, Any]], None]) -> int:
    """Print `result` as one JSON line or as text; the exit status of a command that succeeded."""
    if as_json:
        print_json(result)
    else:
        print_text(result)
    return 0
