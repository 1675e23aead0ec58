"""YAML aliases in a config: a self-referencing anchor or an alias bomb is a config error in
bounded time, never a RecursionError traceback (found by the config property tests)."""

from __future__ import annotations

import time

import pytest
from portcullis.config.load import ConfigError
from portcullis.issuer import parse_config


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "x: &a {b: *a}\n"])
def test_self_referencing_anchor_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text)


def test_nested_aliases_are_checked_in_bounded_time() -> None:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 12)]
    started = time.monotonic()
    with pytest.raises(ConfigError):
        parse_config("\n".join(lines) + "\n")
    assert time.monotonic() - started < 5
