"""Scale out a simulation over worker processes with ``torch.distributed`` (launched by ``torchrun``).

Every rank holds the same federation (data, partition, model: all deterministic from the
config). Rank 0 runs the server exactly as a single process does; only the clients' local
training is sharded. Per round::

    rank 0 -> all   broadcast [round, m] and the sampled clients S (int64)
    rank 0 -> all   broadcast the clients' received model (every state tensor, key order)
    rank r          trains S[r], S[r + W], S[r + 2W], ...   (W = world size; batched where it can)
    rank r -> 0     each update as one flat tensor + [client, samples, loss] (float64), in order

Rank 0 takes the updates in the order of S (its own are trained when their turn comes, so
the workers train while it does and wait on their send: at most one update per worker is in
flight) and hands them to the same client hooks, codecs and aggregator as the
single-process transport. So every feature (codecs, error feedback, DP, secure
aggregation, robust rules) works unchanged, and with sequential clients the run directory is
bit-identical to one process's: each client's update is computed by the same function from
the same inputs and summed in the same order. (Updates are sent to rank 0 rather than
all-reduced: an all-reduce of partial sums would change the summation order, and robust
rules and secure aggregation need the individual updates.) With batched clients, a worker's
chunks hold other clients than one process's chunks, so results agree up to float rounding.

Transport: gloo on CPU (NCCL would need the tensors on GPUs; fed8 trains on CPU today).
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Mapping, Sequence

import torch

from ..errors import Fed8Error
from .client import ClientUpdate

__all__ = ["Workers", "broadcast_text", "init_group", "serve", "world_from_env"]

_TRAIN, _STOP = 1, 0


def world_from_env() -> tuple[int, int]:
    """``(rank, world size)`` from torchrun's environment; ``(0, 1)`` outside torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_group(timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join torchrun's process group (gloo); returns ``(rank, world size)``."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def broadcast_text(text: str | None) -> str:
    """Rank 0's ``text`` on every rank (UTF-8 bytes in a uint8 tensor; no pickle)."""
    import torch.distributed as dist

    data = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8) if dist.get_rank() == 0 else None
    n = torch.tensor([data.numel() if data is not None else 0], dtype=torch.int64)
    dist.broadcast(n, 0)
    if data is None:
        data = torch.empty(int(n), dtype=torch.uint8)
    dist.broadcast(data, 0)
    return bytes(data.tolist()).decode()


def _broadcast_state(state: dict[str, torch.Tensor] | None, template: Mapping[str, torch.Tensor]) -> dict:
    import torch.distributed as dist

    out = {}
    for k, t in template.items():
        # rank 0 only sends (broadcast leaves the root's tensor as it is); the others receive into a new one
        buf = state[k].contiguous() if state is not None else torch.empty_like(t, memory_format=torch.contiguous_format)
        dist.broadcast(buf, 0)
        out[k] = buf
    return out


def _flat(update: ClientUpdate, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.cat([update.delta[k].reshape(-1) for k in keys])
    meta = torch.tensor([update.client, update.num_samples, update.train_loss], dtype=torch.float64)
    return flat, meta


def _unflat(flat: torch.Tensor, meta: torch.Tensor, shapes: Mapping[str, torch.Size]) -> ClientUpdate:
    delta, at = {}, 0
    for k, shape in shapes.items():
        n = shape.numel()
        delta[k] = flat[at : at + n].view(shape)
        at += n
    return ClientUpdate(client=int(meta[0]), delta=delta, num_samples=int(meta[1]), train_loss=float(meta[2]))


class Workers:
    """Rank 0's side: shards each round's clients over the ranks of the process group.

    Parameters
    ----------
    template
        The model's state dict (keys, shapes, dtypes of what is broadcast).
    """

    def __init__(self, template: Mapping[str, torch.Tensor]) -> None:
        import torch.distributed as dist

        self.world = dist.get_world_size()
        self.template = {k: v.detach() for k, v in template.items()}
        self.keys = [k for k, v in self.template.items() if v.is_floating_point()]
        dtypes = {self.template[k].dtype for k in self.keys}
        if len(dtypes) != 1:
            raise Fed8Error(f"distributed workers need one float dtype across the model's state; got {dtypes}.")
        self.dtype = dtypes.pop()
        self.shapes = {k: self.template[k].shape for k in self.keys}
        self.size = sum(s.numel() for s in self.shapes.values())

    def updates(self, rnd: int, received: Mapping[str, torch.Tensor], clients: Sequence[int],
                local: Callable[[Sequence[int]], Iterator[ClientUpdate]]) -> Iterator[ClientUpdate]:
        """Every client's update in the order of ``clients``; ``local(ks)`` trains rank 0's own share."""
        import torch.distributed as dist

        dist.broadcast(torch.tensor([_TRAIN, rnd, len(clients)], dtype=torch.int64), 0)
        if clients:
            dist.broadcast(torch.tensor(list(clients), dtype=torch.int64), 0)
        _broadcast_state(dict(received), self.template)
        mine = local(list(clients[0 :: self.world]))
        for j, _ in enumerate(clients):
            src = j % self.world
            if src == 0:
                yield next(mine)
                continue
            flat, meta = torch.empty(self.size, dtype=self.dtype), torch.empty(3, dtype=torch.float64)
            dist.recv(flat, src)
            dist.recv(meta, src)
            u = _unflat(flat, meta, self.shapes)
            if u.client != clients[j]:
                raise Fed8Error(f"worker {src} sent client {u.client}'s update where client {clients[j]}'s was due.")
            yield u

    def stop(self) -> None:
        import torch.distributed as dist

        dist.broadcast(torch.tensor([_STOP, 0, 0], dtype=torch.int64), 0)


def serve(template: Mapping[str, torch.Tensor], local: Callable[[int, Mapping[str, torch.Tensor], Sequence[int]],
          Iterator[ClientUpdate]]) -> int:
    """A worker rank's loop: train its share of every round's clients until rank 0 stops; returns rounds served.

    ``local(rnd, received, ks)`` trains clients ``ks`` from the received model (the transport's own
    training function, so a worker computes exactly what one process would).
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    keys = [k for k, v in template.items() if v.is_floating_point()]
    served = 0
    while True:
        head = torch.empty(3, dtype=torch.int64)
        dist.broadcast(head, 0)
        cmd, rnd, m = (int(v) for v in head)
        if cmd == _STOP:
            return served
        clients = torch.empty(m, dtype=torch.int64)
        if m:
            dist.broadcast(clients, 0)
        received = _broadcast_state(None, template)
        for u in local(rnd, received, clients.tolist()[rank::world]):
            flat, meta = _flat(u, keys)
            dist.send(flat.contiguous(), 0)
            dist.send(meta, 0)
        served += 1
