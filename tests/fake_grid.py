"""An in-process fake of Flower's Grid: fed8's real ServerApp and ClientApp code, no processes, no network.

Each fake node has a node config and a Context; a message is answered by calling the
ClientApp's handler for its type, as a SuperNode would in a fresh ClientApp process. Nodes
can be marked down (no reply, like a SuperNode killed mid-round) or restarted (a new node
id, as Flower gives a restarted SuperNode).
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fed8.flower import client_app


class FakeGrid:
    def __init__(self, num_nodes: int, state_root: Path) -> None:
        self._ids = itertools.count(1001)
        self.configs = {}
        for i in range(num_nodes):
            self.configs[next(self._ids)] = {"partition-id": i, "num-partitions": num_nodes,
                                             "state-dir": str(state_root / str(i))}
        self.down: set[int] = set()
        self.sent: list[Message] = []
        self.drop_in_round: dict[int, set[int]] = {}  # {round: partitions that do not answer its train message}
        self.restart_in_round: dict[int, int] = {}  # {round: partition whose node dies then restarts (new id)}
        self.replay_in_round: dict[int, int] = {}  # {round: partition whose reply is replaced by its previous one}
        self.lose_reply_in_round: dict[int, set[int]] = {}  # {round: partitions that train but whose reply is lost}
        self.last_reply: dict[int, Message] = {}
        self.replies: list[Message] = []
        self._msg_ids = itertools.count(1)
        self._outbox: list[Message] = []

    def get_node_ids(self):
        return [n for n in self.configs if n not in self.down]

    def node_of(self, partition: int) -> int:
        return next(n for n, c in self.configs.items() if c["partition-id"] == partition and n not in self.down)

    def restart(self, partition: int) -> int:
        """The node of ``partition`` comes back with a new node id (its disk state kept)."""
        old = self.node_of(partition)
        self.down.add(old)
        new = next(self._ids)
        self.configs[new] = dict(self.configs[old])
        return new

    def push_messages(self, messages):
        """Each message is answered at once (as its node would); :meth:`pull_messages` hands the replies out."""
        messages = list(messages)
        for m in messages:
            m.metadata.__dict__["_message_id"] = f"m{next(self._msg_ids)}"  # as a real Grid's push sets it
        self._outbox.extend(self.answer(messages))
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        ids = set(message_ids)
        out = [r for r in self._outbox if r.metadata.reply_to_message_id in ids]
        self._outbox = [r for r in self._outbox if r.metadata.reply_to_message_id not in ids]
        return out

    def answer(self, messages):
        """The replies to ``messages`` (none from a node that is down, dropped or whose reply is lost)."""
        out = []
        for m in messages:
            self.sent.append(m)
            nid = m.metadata.dst_node_id
            if nid in self.down or nid not in self.configs:
                continue
            job = m.content["job"] if "job" in m.content else None
            pid = self.configs[nid]["partition-id"]
            if m.metadata.message_type == "train" and job is not None:
                rnd = int(job["round"])
                if pid in self.drop_in_round.get(rnd, set()):
                    continue
                if self.restart_in_round.get(rnd) == pid:
                    del self.restart_in_round[rnd]
                    self.restart(pid)  # killed mid-round: no reply; it comes back with a new id
                    continue
                if self.replay_in_round.get(rnd) == pid and pid in self.last_reply:
                    # a stale reply of an earlier round, as the answer to this message
                    out.append(Message(content=self.last_reply[pid].content, reply_to=m))
                    continue
            ctx = Context(run_id=1, node_id=nid, node_config=self.configs[nid], state=RecordDict(), run_config={})
            reply = client_app.app(m, ctx)  # the ClientApp routes by message type, as on a SuperNode
            if m.metadata.message_type == "train":
                self.last_reply[pid] = reply
                if job is not None and pid in self.lose_reply_in_round.get(int(job["round"]), set()):
                    continue  # the node trained (and kept what it keeps); its reply never arrives
            self.replies.append(reply)
            out.append(reply)
        return out


@contextlib.contextmanager
def task_identity():
    """What a ServerApp process has set before it creates messages."""
    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class FakeClock:
    """Virtual time for the exchange's polling: the fake nodes answer at push time, so a message
    with no reply waits its whole timeout; here ``sleep`` advances the clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_server_app(run_dir: Path, grid: FakeGrid) -> None:
    """fed8's ServerApp main on ``grid`` for the run in ``run_dir`` (polling on a :class:`FakeClock`)."""
    from unittest import mock

    from fed8.flower import exchange, server_app

    with task_identity(), mock.patch.object(exchange, "time", FakeClock()):
        server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                      run_config={"run-dir": str(run_dir)}))
