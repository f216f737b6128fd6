"""The planner's fast path for `key=number` overrides reads them as Hydra's own parser does."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from hpcjobs.config.planning import fast_parse

PARSER = OverridesParser.create()


@pytest.mark.parametrize(
    "text",
    [
        "seed=0",
        "seed=7",
        "seed=100000",
        "a.b_c.d=-3",
        "optimizer.lr=0.01",
        "lr=1.5e-3",
        "lr=-2.0E+2",
    ],
)
def test_a_plain_number_is_read_as_hydras_parser_reads_it(text):
    fast, hydra = fast_parse(text), PARSER.parse_override(text)
    assert fast is not None
    assert (fast.type, fast.key_or_group, fast.value_type, fast.package, fast.input_line) == (
        hydra.type, hydra.key_or_group, hydra.value_type, hydra.package, hydra.input_line
    )  # fmt: skip
    assert type(fast.value()) is type(hydra.value()) and fast.value() == hydra.value()


@pytest.mark.parametrize(
    "text",
    [
        "seed=007", "seed=1_000", "lr=.5", "lr=5.", "seed=+1", "lr=inf", "lr=nan", "lr=1e-3",
        "optimizer=adam", "data/augment=none", "+seed=1", "++seed=1", "~seed", "seed=1,2",
        "seed=range(0,3)", "seed=' 1'", "seed=null", "hydra.job.num=1@x",
    ],
)  # fmt: skip
def test_anything_else_goes_to_hydras_parser(text):
    assert fast_parse(text) is None
