"""Latency of a message round on Flower: fed8's exchange polls briefly, and a node's light stages start without torch."""

from types import SimpleNamespace
from unittest import mock

import pytest

from fed8.flower import exchange

pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install 'fed8[flower]')")

from fake_grid import FakeClock  # noqa: E402


class ScriptedGrid:
    """Replies become available at given (virtual) times; ``pull_messages`` returns those that have."""

    def __init__(self, clock, arrive_at: dict, refused=()):
        self.clock, self.arrive_at, self.refused = clock, dict(arrive_at), set(refused)
        self.pulls: list[float] = []

    def push_messages(self, messages):
        return [None if m in self.refused else m for m in messages]

    def pull_messages(self, ids):
        self.pulls.append(self.clock.now)
        got = [i for i in ids if i in self.arrive_at and self.arrive_at[i] <= self.clock.now]
        for i in got:
            del self.arrive_at[i]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in got]


def _exchange(arrive_at, messages, timeout, refused=()):
    clock = FakeClock()
    grid = ScriptedGrid(clock, arrive_at, refused)
    with mock.patch.object(exchange, "time", clock):
        replies = exchange.send_and_receive(grid, messages, timeout=timeout, max_poll=0.5)
    return [r.metadata.reply_to_message_id for r in replies], clock.now, grid


@pytest.mark.parametrize("last", [0.0, 2.9, 7.3, 40.0])
def test_the_exchange_returns_within_one_poll_of_the_last_reply(last):
    got, now, grid = _exchange({"a": 0.4, "b": last}, ["a", "b"], timeout=600)
    assert sorted(got) == ["a", "b"]
    assert last <= now <= last + 0.5  # Flower's own send_and_receive sleeps 3 s between pulls
    assert len(grid.pulls) <= 20 + last / 0.5  # a short backoff, then one pull per max_poll


def test_a_missing_reply_ends_the_exchange_at_its_timeout_with_the_others():
    got, now, _ = _exchange({"a": 1.0}, ["a", "b"], timeout=30)
    assert got == ["a"] and 30 <= now <= 30.01


def test_a_message_the_superlink_refused_is_not_waited_for():
    got, now, grid = _exchange({"a": 1.0}, ["a", "b"], timeout=600, refused={"b"})
    assert got == ["a"] and now <= 1.5
    got, now, grid = _exchange({}, ["b"], timeout=600, refused={"b"})
    assert got == [] and now == 0 and grid.pulls == []


def test_a_nodes_query_and_key_stages_start_without_torch(tmp_path):
    """Flower starts a ClientApp process per message: the partition query and the secure-aggregation key stages
    answer without importing torch (about 1.3-2.5 s of each such process's start on this machine)."""
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from fake_grid import task_identity
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from fed8.flower import client_app
from fed8.flower.messages import bytes_array, from_bytes_array

def ctx(k):
    return Context(run_id=1, node_id=100 + k, node_config={{"partition-id": k, "state-dir": {str(tmp_path)!r} + f"/{{k}}"}},
                   state=RecordDict(), run_config={{}})

def msg(kind, k, records):
    job = ConfigRecord({{"round": 1, "client": k, "run-key": "r", "t": 2, "ring-bits": 10, "length": 8}})
    return Message(content=RecordDict({{**records, "job": job}}), dst_node_id=100 + k, message_type=kind)

with task_identity():
    assert int(client_app.app(msg("query", 1, {{}}), ctx(1)).content["a"]["partition-id"]) == 1
    adverts = {{str(k): client_app.app(msg("query.secagg_keys", k, {{}}), ctx(k)).content["secagg"]["advert"]
               for k in range(3)}}
    for k in range(3):
        cts = client_app.app(msg("query.secagg_shares", k, {{"secagg": ArrayRecord(adverts)}}), ctx(k)).content["secagg"]
        assert sorted(int(v) for v in cts) == [v for v in range(3) if v != k]
print("torch" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
