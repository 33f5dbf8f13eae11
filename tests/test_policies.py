"""The cache-policy registry is the one list of policies: the CLI, config validation and the evals read it, and a
policy registered anywhere runs through an eval without touching another file."""
from __future__ import annotations

import json
import re

import click
import pytest
import torch
from click.testing import CliRunner

from symphony.cli.main import main
from symphony.config import load_config
from symphony.errors import SymphonyError
from symphony.evaluation.methods import parse_methods
from symphony.runtime.cache import BoundedCache
from symphony.runtime.engine import StreamingEngine
from symphony.runtime.policies import POLICIES, CachePolicy, get_policy, register_policy
from symphony.runtime.stream import Stream


class RecentPolicy(CachePolicy):
    """The most recent tokens only: no sinks, no ledger, no memories."""

    name = "recent"
    help = "the most recent tokens only, at the same slot budget"

    def make_stream(self, engine, persistent=0):
        c = engine.cache_cfg
        return Stream(BoundedCache.for_model(engine.model, 0, 0, c.sinks + c.ledger + c.window, c.span_len), None)


@pytest.fixture
def recent():
    register_policy(RecentPolicy)
    try:
        yield POLICIES["recent"]
    finally:
        POLICIES.pop("recent")


def _commands(group: click.Group, ctx: click.Context):
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, ctx)


def test_the_cli_config_and_evals_offer_exactly_the_registry():
    names = list(POLICIES)
    assert names == ["full", "sinks", "symphony"]
    ctx = click.Context(main)
    params = [p for cmd in _commands(main, ctx) for p in cmd.params]
    policy = [p for p in params if p.name == "policy"]
    assert policy, "no command has a --policy option"
    assert all(list(p.type.choices) == names for p in policy)
    methods = [p for p in params if p.name == "methods"]
    assert methods and all(p.default.split(",") == names for p in methods)

    with pytest.raises(SymphonyError) as err:
        load_config("tiny", ["cache.policy=lru"])
    assert re.search(r"must be one of (.+); got", str(err.value)).group(1).split(", ") == names
    assert [load_config("tiny", [f"cache.policy={n}"]).cache.policy for n in names] == names

    assert parse_methods(",".join(names)) == names
    with pytest.raises(SymphonyError, match="choose from " + ", ".join(names) + "$"):
        parse_methods("lru")


def test_every_policy_declares_what_the_others_ask(tiny_cfg):
    c = tiny_cfg.cache
    for name, policy in POLICIES.items():
        assert policy.name == name and policy.help and "\n" not in policy.help
        assert (policy.capacity(c) is None) == (not policy.bounded)
    assert [n for n, p in POLICIES.items() if p.uses_memory] == ["symphony"]
    assert POLICIES["sinks"].capacity(c, 3) == POLICIES["symphony"].capacity(c, 3) == c.sinks + c.ledger + c.window + 3
    assert POLICIES["symphony"].knowledge_slots(c, 3) == 3 + c.ledger and POLICIES["sinks"].knowledge_slots(c) == 0


def test_register_policy_refuses_a_taken_or_bad_name():
    class Again(CachePolicy):
        name = "sinks"

    class Spaced(CachePolicy):
        name = "two words"

    with pytest.raises(ValueError, match="registered already"):
        register_policy(Again)
    with pytest.raises(ValueError, match="must be lower-case"):
        register_policy(Spaced)
    with pytest.raises(TypeError):
        register_policy(object)
    with pytest.raises(ValueError, match="unknown cache policy 'lru'; choose from full, sinks, symphony"):
        get_policy("lru")
    assert list(POLICIES) == ["full", "sinks", "symphony"]


def test_a_registered_policy_builds_its_own_cache(recent, tiny_loaded, tiny_cfg):
    eng = StreamingEngine(tiny_loaded.model, tiny_loaded.tokenizer, tiny_cfg.cache, tiny_cfg.salience, policy="recent")
    c = tiny_cfg.cache
    budget = c.sinks + c.ledger + c.window
    assert eng.capacity == budget
    stream = eng.new_stream()
    n = budget + 3 * c.segment_len
    eng.ingest(stream, torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0)))
    assert stream.cache.regions() == {"sinks": 0, "ledger": 0, "window": budget}
    assert stream.cache.positions.tolist() == list(range(n - budget, n))  # the most recent tokens, nothing else


def test_a_registered_policy_runs_through_an_eval(recent, tmp_path):
    out = tmp_path / "needle"
    res = CliRunner().invoke(main, ["eval", "needle", "-c", "tiny", "--methods", "recent,sinks", "--lengths", "1k",
                                    "--depths", "50", "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "needle.json").read_text())
    assert [(r["method"], r["status"]) for r in data["rows"]] == [("recent", "ok"), ("sinks", "ok")]
    assert set(data["summary"]) == {"recent", "sinks"}
    assert (out / "needle_recent.png").is_file()
    assert "recent" in res.output  # the accuracy table
