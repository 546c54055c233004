"""LoadTable's counters against a brute-force account of the same calls."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from preble.core.routing.worker_load import LoadTable

WORKERS = ("a", "b", "c", "d")
operations = st.lists(st.one_of(
    st.tuples(st.just("join"), st.sampled_from(WORKERS)),
    st.tuples(st.just("leave"), st.sampled_from(WORKERS)),
    st.tuples(st.just("route"), st.sampled_from(WORKERS)),
    st.tuples(st.just("done"), st.integers(0, 30)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_batches_and_idle_workers_follow_routes_and_completions(ops):
    table = LoadTable(step_tokens=512)
    members: list[str] = []
    open_requests: dict[str, tuple[str, int]] = {}  # request -> (worker, context)
    for n, (op, arg) in enumerate(ops):
        if op == "join" and arg not in members:
            table.add_worker(arg)
            members.append(arg)
        elif op == "leave" and arg in members:
            table.remove_worker(arg)
            members.remove(arg)
            open_requests = {r: v for r, v in open_requests.items() if v[0] != arg}
        elif op == "route" and arg in members:
            table.add(arg, f"r{n}", 0.1, 10 + n, float(n))
            open_requests[f"r{n}"] = (arg, 10 + n)
        elif op == "done":
            rid = f"r{arg}"
            table.remove(rid)
            open_requests.pop(rid, None)
        batch = {w: sum(1 for x, _ in open_requests.values() if x == w) for w in members}
        context = {w: sum(c for x, c in open_requests.values() if x == w) for w in members}
        assert table.ids == members
        assert table.batch.tolist() == [batch[w] for w in members]
        assert table.context.tolist() == [context[w] for w in members]
        assert table.idle == sum(1 for w in members if batch[w] == 0)
