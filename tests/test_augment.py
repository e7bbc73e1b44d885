"""Client-side data augmentation: the transform itself, every training path seeing the same pixels, and runs."""

import pytest
import torch

import fed8
from fed8._io import load_tensors
from fed8.data.augment import BLACK, Augmentation, augment, crop_padding
from fed8.errors import ConfigError, ParameterError
from fed8.federated.batched import train_clients_batched
from fed8.federated.client import ClientData, LocalTraining, train_client
from fed8.federated.cohort import train_cohort
from fed8.models import build_model

from conftest import interrupted_run


def _candidates(x, pad, flips):
    """Every image a crop from ``pad`` pixels of padding (and, with ``flips``, its mirror) can give: [K, N, C, H, W]."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=BLACK)
    out, keys = [], []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            win = xp[:, :, dy : dy + h, dx : dx + w]
            for f in ((False, True) if flips else (False,)):
                out.append(win.flip(-1) if f else win)
                keys.append((dy, dx, f))
    return torch.stack(out), keys


@pytest.mark.parametrize("kind, pad", [("crop", 2), ("crop_flip", 2), ("flip", 0)])
def test_each_image_is_one_padded_crop_or_its_mirror_and_every_choice_is_drawn_evenly(kind, pad):
    n, side = 3000, 6
    x = torch.randperm(n * 2 * side * side).float().reshape(n, 2, side, side)  # distinct values: one match per image
    aug = Augmentation(kind, pad)
    out = augment(x, aug, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    cands, keys = _candidates(x, crop_padding(aug, side, side), aug.flip)
    match = (cands == out.unsqueeze(0)).flatten(2).all(-1)  # [K, N]
    assert bool((match.sum(0) == 1).all())  # every output image is exactly one candidate
    counts = match.sum(1).float()
    expected = n / len(keys)
    assert len(keys) == {"crop": 25, "crop_flip": 50, "flip": 2}[kind]
    assert float(((counts - expected) ** 2 / expected).sum()) < len(keys) * 2  # chi-square: uniform over choices
    again = augment(x, aug, torch.Generator().manual_seed(0))
    assert torch.equal(again, out)
    assert not torch.equal(augment(x, aug, torch.Generator().manual_seed(1)), out)


def test_padding_is_black_after_normalisation_and_nothing_else_changes_without_augmentation():
    x = torch.ones(64, 1, 8, 8, dtype=torch.float64)
    out = augment(x, Augmentation("crop", 2), torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and set(out.unique().tolist()) == {BLACK, 1.0} and BLACK == -1.0
    assert augment(x, Augmentation("none"), torch.Generator()) is x
    assert augment(x[:0], Augmentation("crop_flip"), torch.Generator()).shape == (0, 1, 8, 8)


def test_default_padding_follows_the_image_side_and_bad_values_are_refused():
    assert crop_padding(Augmentation("crop"), 32, 32) == 4 and crop_padding(Augmentation("crop"), 28, 28) == 3
    assert crop_padding(Augmentation("crop_flip"), 6, 40) == 1 and crop_padding(Augmentation("flip", 5), 28, 28) == 0
    with pytest.raises(ParameterError, match=r"pad = 15 .*Use at most 14"):
        crop_padding(Augmentation("crop", 15), 28, 28)
    with pytest.raises(ParameterError, match="kind must be one of"):
        Augmentation("rotate")
    with pytest.raises(ParameterError, match="integer >= 0"):
        Augmentation("crop", -1)


def _clients(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ClientData(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                       torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)) for n in sizes]


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_batched_clients_see_the_pixels_they_see_one_by_one(name):
    model = build_model(name, in_channels=1, height=28, width=28, num_classes=10, seed=0, hidden=32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = _clients([9, 1, 13, 4])
    plain = LocalTraining(epochs=2, batch_size=4, lr=0.05, momentum=0.9)
    aug = LocalTraining(epochs=2, batch_size=4, lr=0.05, momentum=0.9, augment=Augmentation("crop_flip", 2))
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(len(data))]  # noqa: E731
    seq = [train_client(model, state, d, aug, generator=g, client=i) for i, (d, g) in enumerate(zip(data, gens()))]
    bat = train_clients_batched(model, state, data, aug, generators=gens(), clients=list(range(len(data))))
    unaug = [train_client(model, state, d, plain, generator=g, client=i) for i, (d, g) in enumerate(zip(data, gens()))]
    for s, b, u in zip(seq, bat, unaug):
        scale = max(1.0, max(float(v.abs().max()) for v in s.delta.values()))
        assert _max_diff(s.delta, b.delta) <= 1e-5 * scale
        assert _max_diff(s.delta, u.delta) > 1e-3 * scale  # the augmentation changed what was learned


def test_one_pass_cohorts_see_the_pixels_the_clients_see_one_by_one():
    model = build_model("cnn", in_channels=1, height=28, width=28, num_classes=10, seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = _clients([8, 1, 5, 0, 3])
    local = LocalTraining(epochs=1, batch_size=8, lr=0.05, augment=Augmentation("crop", 3))
    ups = [train_client(model, state, d, local, generator=torch.Generator().manual_seed(i), client=i)
           for i, d in enumerate(data)]
    want = {k: sum(u.num_samples * u.delta[k] for u in ups) / sum(u.num_samples for u in ups) for k in ups[0].delta}
    got = train_cohort(model, state, data, local, weight=float, clients=list(range(len(data))),
                       generators=[torch.Generator().manual_seed(i) for i in range(len(data))])
    scale = max(float(v.abs().max()) for v in want.values())
    assert _max_diff(want, got.mean) <= 2e-6 * scale
    with pytest.raises(ParameterError, match="one generator per client"):
        train_cohort(model, state, data, local, weight=float, clients=list(range(len(data))))


def _bytes(run_dir):
    return (run_dir / "model.safetensors").read_bytes()


AUG = ["train.augment=crop_flip", "train.local_epochs=2"]


def test_augmented_runs_repeat_resume_and_batch_to_the_same_model(tmp_path, small):
    cfg = fed8.load_config(None, small + AUG + ["train.rounds=3", "model.name=mlp"])
    a = fed8.run(cfg, out=tmp_path / "a", report=False)
    assert _bytes(fed8.run(cfg, out=tmp_path / "b", report=False).run_dir) == _bytes(a.run_dir)
    interrupted_run(cfg, tmp_path / "cut", 1)
    fed8.run(resume=tmp_path / "cut", report=False)
    assert _bytes(tmp_path / "cut") == _bytes(a.run_dir)
    plain = fed8.run(cfg.replace(["train.augment=none"]), out=tmp_path / "plain", report=False)
    assert _bytes(plain.run_dir) != _bytes(a.run_dir)
    batched = fed8.run(cfg.replace(["run.client_batching=on"]), out=tmp_path / "batched", report=False)
    w, v = (load_tensors(r.run_dir / "model.safetensors") for r in (a, batched))
    assert _max_diff(w, v) <= 1e-4 * max(float(t.abs().max()) for t in w.values())
    assert a.final["eval_accuracy"] > 0.2  # it trains (600 images, 3 rounds: plain 0.40)


def test_client_threads_train_augmented_clients_as_one_thread_does(tmp_path, small):
    sets = small + AUG + ["model.name=mlp"]
    one = fed8.run(fed8.load_config(None, sets + ["run.parallel_clients=1"]), out=tmp_path / "one", report=False)
    two = fed8.run(fed8.load_config(None, sets + ["run.threads=2", "run.parallel_clients=2"]), out=tmp_path / "two",
                   report=False)
    assert _bytes(one.run_dir) == _bytes(two.run_dir)  # one torch thread per client in both


def test_augment_keys_are_checked_against_the_data(tmp_path, small):
    with pytest.raises(ConfigError, match=r"train.augment_pad = 15 .*28x28 .*Use 1..14, or 0 for 3"):
        fed8.run(fed8.load_config(None, small + ["train.augment=crop", "train.augment_pad=15"]), out=tmp_path / "x",
                 report=False)
    assert not list((tmp_path / "x").glob("*/model.safetensors"))
    with pytest.raises(ConfigError, match="train.augment"):
        fed8.load_config(None, ["train.augment=rotate"])
