"""Split training samples across simulated clients: iid, Dirichlet label skew, shards, or the data's own clients.

All functions are pure: they take labels and a seed and return index arrays, so the
same seed gives the same partition on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["ClientSplit", "dirichlet", "iid", "local_split", "natural", "partition", "partition_summary", "shards"]


def iid(num_samples: int, num_clients: int, *, seed: int) -> list[np.ndarray]:
    """Shuffle and deal samples into ``num_clients`` parts whose sizes differ by at most 1."""
    perm = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, *, alpha: float, seed: int,
              min_samples: int = 2, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed split (Hsu et al. 2019, arXiv:1909.06335).

    For each class c, draw proportions ``p_c ~ Dir(alpha * 1_K)`` over the K clients and
    deal that class's (shuffled) samples out accordingly. Small ``alpha`` concentrates
    each class on few clients. The draw is repeated (deterministically, same generator)
    until every client holds at least ``min_samples`` samples; after ``max_tries`` the
    smallest clients are topped up from the largest so none is empty.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    need = min(min_samples, len(labels) // num_clients)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(o) for o in out) >= need:
            return out
    # Rare fallback (tiny data, many clients): move samples from the largest clients.
    for k in range(num_clients):
        while len(out[k]) < need:
            big = int(np.argmax([len(o) for o in out]))
            out[k] = np.sort(np.append(out[k], out[big][-1]))
            out[big] = out[big][:-1]
    return out


def shards(labels: np.ndarray, num_clients: int, *, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """Pathological non-IID split of McMahan et al. 2017 (arXiv:1602.05629, Sec. 3).

    Sort samples by label, cut them into ``num_clients * shards_per_client`` equal
    shards, and give each client ``shards_per_client`` shards at random.
    """
    labels = np.asarray(labels)
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ConfigError(
            f"data.shards_per_client * data.num_clients = {num_shards} shards exceeds the "
            f"{len(labels)} training samples; lower data.shards_per_client or data.num_clients."
        )
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, num_shards)
    assign = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assign]


def natural(owners: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """The data's own clients: client ``k`` holds the images whose id is the ``k``-th smallest of ``owners``' ids.

    Real federated data comes split already (LEAF's FEMNIST by writer, Caldas et al. 2018,
    arXiv:1812.01097; one hospital's scans): the split is the experiment, so it is kept,
    not redrawn. ``num_clients`` must be the number of distinct ids.
    """
    owners = np.asarray(owners)
    ids = np.unique(owners)
    if len(ids) != num_clients:
        raise ConfigError(f"data.partition = 'natural': the training images name {len(ids)} clients (distinct "
                          f"client ids), but data.num_clients = {num_clients}. Set data.num_clients = {len(ids)}.")
    order = np.argsort(owners, kind="stable")
    cuts = np.searchsorted(owners[order], ids[1:])
    return [np.sort(part) for part in np.split(order, cuts)]


def partition(labels: np.ndarray, num_clients: int, scheme: str, *, alpha: float = 0.5,
              shards_per_client: int = 2, seed: int = 0, owners: np.ndarray | None = None) -> list[np.ndarray]:
    """Dispatch to :func:`iid`, :func:`dirichlet`, :func:`shards` or :func:`natural` (``owners``: a client id per
    sample); returns one index array per client."""
    if scheme == "natural":
        if owners is None:
            raise ConfigError("data.partition = 'natural' needs a client id per training image (an npz client_train "
                              "array); this data has none. Choose data.partition = iid | dirichlet | shards.")
        return natural(owners, num_clients)
    if num_clients > len(labels):
        raise ConfigError(
            f"data.num_clients = {num_clients} exceeds the {len(labels)} training samples; "
            "every client needs at least one sample. Lower data.num_clients."
        )
    if scheme == "iid":
        return iid(len(labels), num_clients, seed=seed)
    if scheme == "dirichlet":
        if alpha <= 0:
            raise ConfigError(f"data.alpha must be > 0 (Dirichlet concentration); got {alpha}. "
                              "Use e.g. 0.5 for moderate skew.")
        return dirichlet(labels, num_clients, alpha=alpha, seed=seed)
    if scheme == "shards":
        return shards(labels, num_clients, shards_per_client=shards_per_client, seed=seed)
    raise ConfigError(f"data.partition must be one of 'iid', 'dirichlet', 'shards', 'natural'; got {scheme!r}.")


@dataclass(frozen=True)
class ClientSplit:
    """One client's sample indices (into the training split), for local training and local test."""

    train: np.ndarray
    test: np.ndarray


def local_split(index: np.ndarray, *, test_fraction: float, seed: int, client: int) -> ClientSplit:
    """Split one client's samples into local train and local test (on-device evaluation).

    The test share is ``floor(test_fraction * n)``, but a client keeps at least one
    training sample.
    """
    rng = np.random.default_rng([seed, client])
    perm = rng.permutation(index)
    n_test = min(int(test_fraction * len(perm)), len(perm) - 1)
    return ClientSplit(train=np.sort(perm[n_test:]), test=np.sort(perm[:n_test]))


def partition_summary(splits: list[ClientSplit], labels: np.ndarray, num_classes: int) -> dict:
    """The content of ``partition.json``: sample counts and label histograms per client."""
    clients = []
    for k, s in enumerate(splits):
        clients.append({
            "client": k,
            "train_samples": int(len(s.train)),
            "test_samples": int(len(s.test)),
            "label_histogram": np.bincount(labels[np.concatenate([s.train, s.test])],
                                           minlength=num_classes).tolist(),
        })
    return {"num_clients": len(splits), "num_classes": num_classes, "clients": clients}
