import numpy as np
import pytest

from fed8.data.partition import dirichlet, iid, local_split, partition, partition_summary, shards
from fed8.errors import ConfigError

LABELS = np.repeat(np.arange(10), 200)  # 2000 samples, 10 classes


def _assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_every_sample_exactly_once_and_seeded(scheme):
    parts = partition(LABELS, 20, scheme, alpha=0.3, shards_per_client=2, seed=1)
    assert len(parts) == 20
    _assert_exact_cover(parts, len(LABELS))
    again = partition(LABELS, 20, scheme, alpha=0.3, shards_per_client=2, seed=1)
    other = partition(LABELS, 20, scheme, alpha=0.3, shards_per_client=2, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def _mean_label_entropy(parts):
    ents = []
    for p in parts:
        h = np.bincount(LABELS[p], minlength=10) / len(p)
        h = h[h > 0]
        ents.append(-(h * np.log(h)).sum())
    return float(np.mean(ents))


def test_dirichlet_skew_grows_as_alpha_falls():
    ent = [_mean_label_entropy(dirichlet(LABELS, 20, alpha=a, seed=0)) for a in (100.0, 1.0, 0.1)]
    assert ent[0] > ent[1] > ent[2]
    assert ent[0] > 0.95 * np.log(10)  # near-iid at alpha = 100
    assert all(len(p) >= 2 for p in dirichlet(LABELS, 20, alpha=0.05, seed=0))


def test_iid_sizes_balanced():
    sizes = [len(p) for p in iid(2003, 20, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_shards_give_few_labels():
    parts = shards(LABELS, 20, shards_per_client=2, seed=0)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert {len(p) for p in parts} == {100}
    with pytest.raises(ConfigError, match="exceeds the 2000 training samples"):
        shards(LABELS, 1000, shards_per_client=3, seed=0)


def test_partition_errors():
    with pytest.raises(ConfigError, match="data.alpha must be > 0"):
        partition(LABELS, 5, "dirichlet", alpha=0.0)
    with pytest.raises(ConfigError, match="data.num_clients = 3000 exceeds"):
        partition(LABELS, 3000, "iid")
    with pytest.raises(ConfigError, match="data.partition must be one of"):
        partition(LABELS, 5, "zipf")


def test_local_split_and_summary():
    parts = partition(LABELS, 4, "iid", seed=0)
    splits = [local_split(p, test_fraction=0.25, seed=0, client=k) for k, p in enumerate(parts)]
    for p, s in zip(parts, splits):
        assert len(s.test) == 125 and len(np.intersect1d(s.train, s.test)) == 0
        assert np.array_equal(np.sort(np.concatenate([s.train, s.test])), p)
    one = local_split(np.array([7]), test_fraction=0.5, seed=0, client=0)
    assert one.train.tolist() == [7] and one.test.size == 0  # keeps its only sample for training
    summary = partition_summary(splits, LABELS, 10)
    assert summary["num_clients"] == 4
    assert sum(sum(c["label_histogram"]) for c in summary["clients"]) == 2000
    assert splits[0].train.size == summary["clients"][0]["train_samples"]


def test_the_natural_partition_keeps_the_data_s_own_clients_whatever_the_seed():
    from fed8.data.partition import natural

    owners = np.array([7, 3, 7, 9, 3, 3, 42, 9])
    parts = partition(LABELS[:8], 4, "natural", seed=0, owners=owners)
    assert [p.tolist() for p in parts] == [[1, 4, 5], [0, 2], [3, 7], [6]]  # client k: the k-th smallest id
    again = partition(LABELS[:8], 4, "natural", seed=5, owners=owners)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    with pytest.raises(ConfigError, match=r"name 4 clients .*data.num_clients = 20. Set data.num_clients = 4"):
        natural(owners, 20)
    with pytest.raises(ConfigError, match="needs a client id per training image"):
        partition(LABELS[:8], 4, "natural")
