"""Shared by bench/w1_fedavg.py and the peer simulators: the workload file, the plain loop, RSS of a process tree.

Pure torch (no fed8 install needed): the peers' own venvs import this, and fed8's model
code from ``src/`` (``fed8.models`` imports torch only), so every column trains the same
network on the same client shards.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SRC = Path(__file__).resolve().parents[2] / "src"


def save_workload(path, *, xs, ys, ex, ey, state, lr, bs, rounds, workload) -> None:
    """Client shards, eval split, initial weights and hyperparameters, for the peer processes."""
    torch.save({"xs": xs, "ys": ys, "ex": ex, "ey": ey, "state": state, "lr": lr, "bs": bs, "rounds": rounds,
                "workload": workload}, path)


def load_workload(path) -> dict:
    return torch.load(path, weights_only=True)  # our own file; weights_only keeps it free of pickled code


def build_cnn():
    """fed8's ``cnn`` (28x28x1, 10 classes), imported from the source tree."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from fed8.models import build_model

    return build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)


def local_sgd(model, x, y, *, lr, bs, gen=None) -> None:
    """One epoch of plain SGD on one client's ``x``, ``y`` in a shuffled order (``gen``), batch ``bs``."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    perm = torch.randperm(x.shape[0], generator=gen)
    for i in range(0, x.shape[0], bs):
        idx = perm[i : i + bs]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def plain_round(model, global_state, xs, ys, gen, *, lr, bs):
    """One FedAvg round without any framework: sequential clients, weighted average."""
    total = {k: torch.zeros_like(v) for k, v in global_state.items()}
    n = 0
    for x, y in zip(xs, ys):
        model.load_state_dict(global_state)
        local_sgd(model, x, y, lr=lr, bs=bs, gen=gen)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                total[k].add_(v, alpha=x.shape[0])
        n += x.shape[0]
    return {k: v / n for k, v in total.items()}


def accuracy(model, ex, ey) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, ex.shape[0], 500):
            correct += int((model(ex[i : i + 500]).argmax(1) == ey[i : i + 500]).sum())
    return correct / ex.shape[0]


class PlainLoop:
    """The plain loop, run one round after each round of the framework under test (interleaved)."""

    def __init__(self, w: dict):
        self.w, self.model = w, build_cnn()
        self.state = {k: v.clone() for k, v in w["state"].items()}
        self.gen = torch.Generator().manual_seed(1)
        self.seconds: list[float] = []

    def round(self, rnd: int) -> None:
        t0 = time.perf_counter()
        self.state = plain_round(self.model, self.state, self.w["xs"], self.w["ys"], self.gen,
                                 lr=self.w["lr"], bs=self.w["bs"])
        if rnd == self.w["rounds"]:  # the same final evaluation the frameworks do
            self.model.load_state_dict(self.state)
            accuracy(self.model, self.w["ex"], self.w["ey"])
        self.seconds.append(time.perf_counter() - t0)


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            statm = Path(f"/proc/{d}/statm").read_text().split()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = int(statm[1]) * page
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


class PeakTreeRSS:
    """Samples the RSS of this process tree every ``interval`` s; ``peak_mb`` after ``stop()``."""

    def __init__(self, root: int | None = None, interval: float = 0.25):
        self.root, self.interval, self.peak = root or os.getpid(), interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_bytes(self.root))
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak / 2**20


def result(name: str, peer_s: list[float], plain_s: list[float], acc: float, rss_mb: float, **extra) -> dict:
    """One column: medians of rounds 2..R and the ratio to the plain loop measured in the same process."""
    f, p = statistics.median(peer_s[1:]), statistics.median(plain_s[1:])
    return {"column": name, "s_per_round": round(f, 4), "plain_s_per_round": round(p, 4), "ratio": round(f / p, 4),
            "eval_accuracy": acc, "peak_rss_mb": round(rss_mb, 1), "rounds_s": [round(s, 3) for s in peer_s],
            "plain_rounds_s": [round(s, 3) for s in plain_s], **extra}
