"""The vocabulary is consistent: kernel enums, Python enums and the docs agree."""

import re
from pathlib import Path

from fastpath import kernel
from fastpath.codes import CATALOGUE, N_CHECKS, STAGE_A_MASK, Check, ExecStatus, LimitKind, OrderType, Scope, Side, TradingState

DOCS = Path(__file__).resolve().parents[2] / "docs" / "checks.md"


def test_catalogue_covers_every_code_once_in_order():
    assert [info.code for info in CATALOGUE] == list(Check)
    assert N_CHECKS <= 64  # failure masks are uint64


def test_stage_a_is_the_validity_prefix():
    assert STAGE_A_MASK == (1 << Check.PRICE_OFF_TICK) - 1


def test_kernel_enums_match_python_enums():
    for enum_type in (Check, Side, OrderType, TradingState, Scope, ExecStatus, LimitKind):
        exported = kernel.ENUMS[enum_type.__name__]
        assert exported == {member.name: member.value for member in enum_type}, enum_type.__name__


def test_docs_table_matches_catalogue():
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\| (\d+) \| `([A-Z_]+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", line)
        if match:
            rows[match.group(2)] = (int(match.group(1)), match.group(3).strip(), match.group(4).strip())
    assert rows == {info.code.name: (info.code.value, info.category, info.clause) for info in CATALOGUE}
