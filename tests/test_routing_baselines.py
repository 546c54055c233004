"""Baseline policies: rotation, load counting, the cache-aware rules at their thresholds and
consistent hashing."""

from __future__ import annotations

import random

import pytest

from preble.core.routing import POLICIES, make_policy
from preble.core.routing.base import RequestDone, RouteRequest
from preble.core.routing.baselines import CacheAware, CacheAwareConfig, PrefixHash, PrefixHashConfig


def clock() -> float:
    return 0.0


def req(rid: str, tokens: list[int], max_tokens: int = 0) -> RouteRequest:
    return RouteRequest(rid, tokens, max_tokens)


def finish(policy, rid: str, worker: str) -> None:
    policy.on_done(RequestDone(rid, worker, 0, 0, 0, 0.1, 0.2))


def with_workers(name: str, workers=("w0", "w1", "w2"), **kw):
    policy = make_policy(name, clock=clock, **kw)
    for w in workers:
        policy.add_worker(w)
    return policy


def test_every_policy_routes_to_an_added_worker_and_refuses_with_none():
    for name in POLICIES:
        policy = make_policy(name, clock=clock)
        with pytest.raises(RuntimeError):
            policy.route(req("r", [1, 2, 3]))
        policy.add_worker("only")
        assert policy.route(req("r", [1, 2, 3], 4)).worker_id == "only"


def test_round_robin_alternates_and_survives_removal_and_addition():
    rr = with_workers("round_robin")
    picks = [rr.route(req(f"r{i}", [i])).worker_id for i in range(4)]
    assert picks == ["w0", "w1", "w2", "w0"]
    rr.remove_worker("w1")  # the next in turn was w1: the rotation goes on with w2
    picks = [rr.route(req(f"s{i}", [i])).worker_id for i in range(3)]
    assert picks == ["w2", "w0", "w2"]
    rr.add_worker("w3")
    picks = [rr.route(req(f"t{i}", [i])).worker_id for i in range(3)]
    assert picks == ["w3", "w0", "w2"]
    rr.remove_worker("w2")  # removing the last-picked worker does not skip anyone
    assert [rr.route(req(f"u{i}", [i])).worker_id for i in range(2)] == ["w3", "w0"]


def test_least_load_counts_outstanding_prompt_and_output_tokens():
    ll = with_workers("least_load", ("w0", "w1"))
    assert ll.route(req("a", [1] * 100, 50)).worker_id == "w0"
    assert ll.route(req("b", [1] * 10, 10)).worker_id == "w1"
    assert ll.route(req("c", [1] * 10, 10)).worker_id == "w1"  # 20 + 20 < 150
    finish(ll, "a", "w0")
    assert ll.route(req("d", [1], 1)).worker_id == "w0"


def test_power_of_two_is_seeded_and_picks_the_lighter_of_its_two():
    def picks(seed):
        p2 = with_workers("power_of_two", ("w0", "w1", "w2", "w3"), seed=seed)
        return [p2.route(req(f"r{i}", [1] * 10, 10)).worker_id for i in range(20)]

    assert picks(3) == picks(3)
    p2 = with_workers("power_of_two", ("w0", "w1"), seed=1)
    p2.route(req("big", [1] * 1000, 0))
    heavy = p2.tokens and max(p2.tokens, key=p2.tokens.get)
    for i in range(5):  # with two workers both are always sampled: the lighter always wins
        d = p2.route(req(f"r{i}", [1], 0))
        assert d.worker_id != heavy


def test_cache_aware_rules_at_their_thresholds():
    ticks = iter(range(1, 1000))
    ca = CacheAware(lambda: next(ticks), CacheAwareConfig(cache_threshold=0.3, balance_abs_threshold=4,
                                            balance_rel_threshold=1.5))
    for w in ("w0", "w1"):
        ca.add_worker(w)
    doc = list(range(100, 130))  # 30 tokens
    assert ca.route(req("seed", doc)).branch == "cache_miss"  # empty tree: least loaded, w0
    # Match rate 30/100 = 0.3 is not above the threshold: a miss, to the least loaded (w1).
    d = ca.route(req("m1", doc + list(range(70))))
    assert (d.worker_id, d.branch) == ("w1", "cache_miss")
    # 30/60 > 0.3: a hit on the worker doc most recently went to, w1.
    d = ca.route(req("h1", doc + list(range(1000, 1030))))
    assert (d.worker_id, d.branch, d.matched_tokens) == ("w1", "cache_hit", 30)
    # Imbalance needs max - min > 4 AND max > 1.5 * min. w1 has 2 outstanding, w0 1.
    for i in range(4):
        ca.route(req(f"x{i}", doc + [i]))  # cache hits on w1: 6 outstanding vs 1
    assert ca.requests == {"w0": 1, "w1": 6}  # difference 5 > 4, 6 > 1.5
    d = ca.route(req("imb", doc + [9]))
    assert (d.worker_id, d.branch) == ("w0", "imbalanced")
    # 2 vs 6: a difference of 4 is not above the threshold: balanced again, so a hit goes to the
    # worker that holds the longest match (x0's prompt went to w1 only), loaded as it is.
    d = ca.route(req("bal", doc + [0, 5, 5]))
    assert (d.worker_id, d.branch, d.matched_tokens) == ("w1", "cache_hit", 31)


def test_cache_aware_tree_is_bounded_per_worker():
    ca = CacheAware(clock, CacheAwareConfig(max_tree_tokens=100))
    ca.add_worker("w0")
    rng = random.Random(0)
    for i in range(200):
        ca.route(req(f"r{i}", [rng.randrange(1 << 20) for _ in range(30)]))
        finish(ca, f"r{i}", "w0")
        assert ca.tree.sizes["w0"] <= 100
    ca.remove_worker("w0")
    assert not ca.tree.root.children


def test_prefix_hash_is_stable_and_moves_about_one_in_n_keys():
    ph = PrefixHash(clock, PrefixHashConfig(prefix_tokens=8))
    for i in range(8):
        ph.add_worker(f"w{i}")
    rng = random.Random(0)
    keys = [[rng.randrange(1 << 20) for _ in range(8)] for _ in range(4000)]
    before = [ph.worker_for(k) for k in keys]
    assert ph.route(req("r", keys[0] + [1, 2, 3])).worker_id == before[0]  # only K tokens count
    assert len(set(before)) == 8
    ph.add_worker("w8")
    after = [ph.worker_for(k) for k in keys]
    moved = [a for a, b in zip(after, before) if a != b]
    assert set(moved) == {"w8"}  # keys only move to the new worker
    assert 0.6 / 9 < len(moved) / len(keys) < 1.6 / 9
    ph.remove_worker("w8")
    assert [ph.worker_for(k) for k in keys] == before
