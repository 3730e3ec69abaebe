"""How a script is assembled: only the prelude functions it uses go in front of its body."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from qrunner.scripts import prelude_for, read_source

LUA = resources.files("qrunner.lua")
SCRIPTS = sorted(
    p.name[: -len(".lua")]
    for p in LUA.iterdir()
    if p.name.endswith(".lua") and not p.name.startswith("_")
)


def _defined(source: str) -> list[str]:
    return re.findall(r"^local function (qr_\w+)\(", source, re.MULTILINE)


def test_a_body_gets_what_it_calls_and_what_those_call_in_prelude_order() -> None:
    # qr_live_add calls qr_live_pack; qr_is_live calls qr_live_entry.
    defined = _defined(prelude_for("qr_is_live(l, s, i) qr_live_add(l, i, e)"))
    assert defined == ["qr_live_pack", "qr_live_entry", "qr_live_add", "qr_is_live"]


def test_a_body_calling_nothing_gets_no_prelude() -> None:
    assert prelude_for("return 1") == ""


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_defines_each_prelude_function_it_calls_once_and_no_other(name: str) -> None:
    source = read_source(name)
    head, body = source.split("local function qr_body()\n", 1)
    defined = _defined(head)
    assert len(defined) == len(set(defined))
    own = set(re.findall(r"local function (qr_\w+)\(", body))  # a script's own helpers
    called = set(re.findall(r"\bqr_\w+(?=\()", body + head)) - own - {"qr_body"}
    assert called <= set(defined), f"{name} calls {sorted(called - set(defined))}, not defined"
    # Each one included is called by the body or by another one included.
    for fn in defined:
        others = re.sub(rf"local function {fn}\(", "", head)
        assert re.search(rf"\b{fn}\(", body + others), f"{name} carries {fn} uncalled"
