"""Workload PRIVACY: DP-FedAvg accuracy at epsilon 1, 4, 8, and secure-aggregation cost.

Part ``dp``: MNIST-10k (bundled), ``cnn``, 100 clients, Dirichlet(0.5), Poisson
sampling q = 0.5, 1 local epoch, clip_norm 1.0, noise calibrated by dp-accounting (RDP)
for (epsilon, 1e-5) over the planned rounds; the non-private run has the same settings
without clipping or noise. One ``fed8.run`` each, same seed.

Part ``secagg``: one protocol round of :class:`fed8.privacy.secagg.SecureSum` over
updates the size of the ``cnn`` (1,663,370 values) for n = 10, 50, 100, 200 clients,
without dropouts and with 10% of the clients dropping after sharing keys and before
sending input (the case that makes the server re-expand their pairwise masks). Reports
the upload per client (keys, encrypted shares, masked input, unmasking shares) against
a float32 upload (4 bytes/value), and seconds per round: all clients' protocol work
(run one after another here; on devices it runs in parallel) and the server's.

Part ``secagg-accuracy``: the default ``fed8 run`` (20 clients, 20 rounds) as plain FedAvg,
with secure aggregation alone (no DP; its default noise-free adaptive clip bound), and with
secure aggregation clipped to a fixed ``clip_norm = 1.0`` (the behaviour before the
adaptive bound). Final eval accuracy, its delta against plain FedAvg, and the clipped
fraction per round.

    python bench/privacy.py                 # parts dp and secagg
    python bench/privacy.py --part secagg --n 10 50
    python bench/privacy.py --part secagg-accuracy
    python bench/privacy.py --part scale --settings "mlp64 q=0.1 T=100 E=5 lr0.1 C=1 fedavgm"

Part ``scale``: DP-FedAvg (central, RDP, delta 1e-5) with 1,000 clients of 8 images
(``SCALE_RUNS``: every setting tried, each at its epsilons and without DP).

Part ``ddg``: the ``dp`` part's workload with secure aggregation and fixed-size sampling (50 of
100 clients per round: distributed placement refuses Poisson sampling), at epsilon 8: noise
added by the server to the unmasked sum (``noise_placement = server``) against the distributed
discrete Gaussian (``distributed``) at each of ``--bits``, and the distributed mechanism at the
server run's noise multiplier (its epsilon is then reported, not targeted).

Part ``ddg-upload``: one secure-aggregation round with the distributed discrete Gaussian on
``cnn``-sized updates for each ``--n`` and ``--bits``: upload per client against float32, and
the clients' encoding seconds (rotation, conditional rounding, exact noise, masking).

    python bench/privacy.py --part ddg --bits 17 16
    python bench/privacy.py --part ddg --server-z 1.489 --same-noise-only      # only the same-noise run
    python bench/privacy.py --part ddg-upload --n 10 100 200 --bits 16 17
    python bench/privacy.py --part ddg-params --bits 16 17     # accounting only: noise per bits and beta
    python bench/privacy.py --part ddg-accounting              # accounting only: noise per party and sampling
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

import fed8

DP_BASE = ["data.num_clients=100", "data.partition=dirichlet", "data.alpha=0.5", "train.rounds=15",
           "train.sampling=poisson", "train.fraction=0.5", "train.local_epochs=1", "quantize.enabled=false",
           "eval.every=5"]
DP_RUNS = {
    "non-private": [],
    "eps=8": ["privacy.dp=central", "privacy.target_epsilon=8", "privacy.clip_norm=1.0"],
    "eps=4": ["privacy.dp=central", "privacy.target_epsilon=4", "privacy.clip_norm=1.0"],
    "eps=1": ["privacy.dp=central", "privacy.target_epsilon=1", "privacy.clip_norm=1.0"],
}
CNN_PARAMS = 1_663_370


def bench_dp(threads: int, more: list[str] = ()) -> list[dict]:
    out = []
    for name, extra in DP_RUNS.items():
        cfg = fed8.load_config(None, DP_BASE + extra + [f"run.threads={threads}", *more])
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            r = fed8.run(cfg, out=f"{d}/run", report=False)
        p = r.summary["privacy"]
        row = {"run": name, "accuracy": r.final["eval_accuracy"], "epsilon": p["epsilon"],
               "noise_multiplier": p["noise_multiplier"], "seconds": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def bench_secagg(ns: list[int], dropout: float) -> list[dict]:
    from fed8.privacy.dp import clip_by_norm
    from fed8.privacy.secagg import SecureSum

    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(CNN_PARAMS, generator=g) * 1e-3}
    clipped, _ = clip_by_norm(base, 1.0)
    out = []
    for n in ns:
        for drop in (0.0, dropout):
            s = SecureSum(seed=0, threshold=0.6, dropout=drop, dropout_phase="before_input")
            t0 = time.perf_counter()
            s.begin(1, list(range(n)), clip_norm=1.0)
            for u in range(n):
                s.add(u, clipped, weight=1.0, bit=1)
            r = s.finish()
            wall = time.perf_counter() - t0
            ups = [r.uplink_bytes[u] for u in range(n) if u not in s.dropped]
            row = {"n": n, "dropout": drop, "ring_bits": r.ring_bits, "inputs": r.num_inputs,
                   "upload_bytes_per_client": sum(ups) / len(ups),
                   "ratio_to_float32": sum(ups) / len(ups) / (4 * CNN_PARAMS),
                   "client_seconds_mean": sum(r.client_seconds.values()) / n,
                   "clients_seconds_total": sum(r.client_seconds.values()),
                   "server_seconds": r.server_seconds, "round_wall_seconds": wall}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


SECAGG_RUNS = {
    "plain FedAvg": [],
    "secure aggregation (adaptive clip)": ["privacy.secure_aggregation=true"],
    "secure aggregation (fixed clip 1.0)": ["privacy.secure_aggregation=true", "privacy.secagg_adaptive_clip=false"],
}


def bench_secagg_accuracy(threads: int) -> list[dict]:
    out, base = [], None
    for name, extra in SECAGG_RUNS.items():
        cfg = fed8.load_config(None, extra + ["quantize.enabled=false", f"run.threads={threads}"])
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            r = fed8.run(cfg, out=f"{d}/run", report=False)
        acc = r.final["eval_accuracy"]
        base = acc if base is None else base
        row = {"run": name, "accuracy": acc, "delta_points": 100 * (acc - base),
               "clipped_fraction": [m.get("clipped_fraction") for m in r.metrics],
               "clip_norm": [m.get("clip_norm") for m in r.metrics], "seconds": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


# Part scale: 1,000 clients of 8 images (MNIST-10k's 8,000 training images, IID; the usual 2,000-image eval split),
# Poisson sampling, central DP (RDP, delta 1e-5) against the same run without DP. Each entry is one tried setting.
SCALE_BASE = ["data.num_clients=1000", "data.partition=iid", "data.test_fraction=0.0", "train.sampling=poisson",
              "train.batch_size=8", "train.momentum=0.0", "quantize.enabled=false", "eval.every=0"]
SCALE_RUNS = {  # name: (settings, epsilons; None = the same training without DP), in the order they were tried
    "cnn q=0.1 T=100 E=1 C=1": (["model.name=cnn", "train.fraction=0.1", "train.rounds=100", "train.local_epochs=1",
                                 "privacy.clip_norm=1.0", "privacy.adaptive_clipping=off"], [None, 8]),
    "mlp64 q=0.1 T=100 E=5 lr0.1 C=1 fedavgm": (
        ["model.name=mlp", "model.hidden=64", "train.fraction=0.1", "train.rounds=100", "train.local_epochs=5",
         "train.lr=0.1", "privacy.clip_norm=1.0", "privacy.adaptive_clipping=off", "server.strategy=fedavgm",
         "server.lr=1.0", "server.momentum=0.9"],
        [None, 8]),
    "cnn q=0.1 T=100 E=1 adaptive clip": (["model.name=cnn", "train.fraction=0.1", "train.rounds=100",
                                           "train.local_epochs=1", "privacy.adaptive_clipping=on"], [8, 4, 2]),
    "cnn q=0.1 T=100 E=1 C=0.1": (["model.name=cnn", "train.fraction=0.1", "train.rounds=100", "train.local_epochs=1",
                                   "privacy.clip_norm=0.1", "privacy.adaptive_clipping=off"], [8]),
    # 2026-12-06: a smaller model (the noise's norm on the mean grows as sqrt(parameters): 1.66 M -> 55 k is 5.5x
    # less), plain FedAvg (no server momentum), adaptive clipping
    "mlp64 q=0.1 T=100 E=5 lr0.1 adaptive clip": (
        ["model.name=mlp", "model.hidden=64", "train.fraction=0.1", "train.rounds=100", "train.local_epochs=5",
         "train.lr=0.1", "privacy.adaptive_clipping=on"], [None, 8, 4, 2]),
    "mlp64 q=0.1 T=100 E=1 adaptive clip": (
        ["model.name=mlp", "model.hidden=64", "train.fraction=0.1", "train.rounds=100", "train.local_epochs=1",
         "privacy.adaptive_clipping=on"], [None, 8, 4, 2]),
    "mlp200 q=0.1 T=100 E=5 lr0.1 adaptive clip": (
        ["model.name=mlp", "model.hidden=200", "train.fraction=0.1", "train.rounds=100", "train.local_epochs=5",
         "train.lr=0.1", "privacy.adaptive_clipping=on"], [None, 8, 4, 2]),
    "cnn q=0.1 T=100 E=5 adaptive clip": (["model.name=cnn", "train.fraction=0.1", "train.rounds=100",
                                           "train.local_epochs=5", "privacy.adaptive_clipping=on"], [None, 8, 4, 2]),
}


def bench_scale(threads: int, only: list[str] | None, only_eps: list[float] | None = None) -> list[dict]:
    out = []
    for name, (extra, epsilons) in SCALE_RUNS.items():
        if only and name not in only:
            continue
        for eps in epsilons:
            if only_eps is not None and eps not in only_eps:
                continue
            dp = [] if eps is None else ["privacy.dp=central", f"privacy.target_epsilon={eps}", "privacy.delta=1e-5",
                                         "privacy.accountant=rdp"]
            sets = SCALE_BASE + extra + dp + [f"run.threads={threads}"]
            if eps is None:  # the non-private reference trains the same way without clipping or noise
                sets = [x for x in sets if not x.startswith(("privacy.clip_norm", "privacy.adaptive"))]
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                r = fed8.run(fed8.load_config(None, sets), out=f"{d}/run", report=False)
            p = r.summary["privacy"]
            row = {"setting": name, "epsilon_target": eps, "accuracy": r.final["eval_accuracy"],
                   "epsilon": p.get("epsilon"), "noise_multiplier": p.get("noise_multiplier"),
                   "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


# Distributed placement refuses Poisson sampling (the noise shares reveal the count): both placements sample 50 of 100.
DDG_BASE = [x for x in DP_BASE if x != "train.sampling=poisson"] + [
    "train.sampling=fixed", "privacy.dp=central", "privacy.target_epsilon=8", "privacy.clip_norm=1.0",
    "privacy.secure_aggregation=true", "privacy.adaptive_clipping=off"]


def _ddg_row(name: str, sets: list[str]) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        r = fed8.run(fed8.load_config(None, sets), out=f"{d}/run", report=False)
    p = r.summary["privacy"]
    ups = [m["uplink_bytes"] / max(m.get("secagg_inputs") or m["num_clients"], 1) for m in r.metrics]
    row = {"run": name, "accuracy": r.final["eval_accuracy"], "epsilon": p["epsilon"],
           "noise_multiplier": p["noise_multiplier"], "noise_std_on_mean": r.metrics[-1].get("noise_std"),
           "aborted_rounds": sum(1 for m in r.metrics if m.get("aborted")),
           "upload_per_client_vs_float32": sum(ups) / len(ups) / (4 * r.summary["parameters"]),
           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(row), flush=True)
    return row


def bench_ddg(threads: int, bits: list[int], server_z: float | None = None, same_noise_only: bool = False,
              extra: list[str] = ()) -> list[dict]:
    """``server_z``: skip the server-placement run and use this noise multiplier for the same-noise run;
    ``extra``: more settings for every run (``--extra``)."""
    base = DDG_BASE + [f"run.threads={threads}", *extra]
    out = []
    if server_z is None:
        out.append(_ddg_row("server placement, eps 8", base + ["privacy.noise_placement=server"]))
        server_z = out[0]["noise_multiplier"]
    for b in bits if not same_noise_only else []:
        out.append(_ddg_row(f"distributed DG, {b} bits, eps 8",
                            base + ["privacy.noise_placement=distributed", f"privacy.ddg_bits={b}"]))
    same_z = [x for x in base if not x.startswith("privacy.target_epsilon")]
    out.append(_ddg_row(f"distributed DG, {bits[0]} bits, z = {server_z:.4g} (server's)",
                        same_z + ["privacy.noise_placement=distributed", f"privacy.ddg_bits={bits[0]}",
                                  f"privacy.noise_multiplier={server_z}"]))
    return out


def bench_ddg_repeats(threads: int, bits: int, thresholds: list[float], repeats: int,
                      extra: list[str] = ()) -> list[dict]:
    """Server placement and the distributed mechanism at each secure-aggregation threshold t, ``repeats`` runs
    each, interleaved (fresh OS noise every run); prints the mean, sd and the gap to server placement with its
    standard error. Single runs near chance spread over several points, so a 2-point comparison needs repeats."""
    import statistics

    base = DDG_BASE + [f"run.threads={threads}", *extra]
    settings = {"server placement, eps 8": base + ["privacy.noise_placement=server"]}
    for t in thresholds:
        settings[f"distributed DG, {bits} bits, eps 8, t = {t:g}"] = base + [
            "privacy.noise_placement=distributed", f"privacy.ddg_bits={bits}", f"privacy.secagg_threshold={t}"]
    acc: dict[str, list[float]] = {name: [] for name in settings}
    out = []
    for _ in range(repeats):
        for name, sets in settings.items():
            row = _ddg_row(name, sets)
            acc[name].append(row["accuracy"])
            out.append(row)
    server = acc["server placement, eps 8"]
    for name, a in acc.items():
        summary = {"run": name, "runs": len(a), "mean_accuracy": statistics.mean(a),
                   "sd": statistics.stdev(a) if len(a) > 1 else None}
        if a is not server and len(a) > 1:
            summary["gap_to_server"] = statistics.mean(a) - statistics.mean(server)
            summary["gap_standard_error"] = (statistics.variance(a) / len(a)
                                             + statistics.variance(server) / len(server)) ** 0.5
        print(json.dumps(summary), flush=True)
        out.append(summary)
    return out


def bench_ddg_upload(ns: list[int], bits: list[int]) -> list[dict]:
    from fed8.privacy.ddg import ddg_for_noise_multiplier
    from fed8.privacy.dp import clip_by_norm
    from fed8.privacy.secagg import SecureSum

    g = torch.Generator().manual_seed(0)
    clipped, _ = clip_by_norm({"w": torch.randn(CNN_PARAMS, generator=g) * 1e-3}, 1.0)
    out = []
    for n in ns:
        for b in bits:
            m = ddg_for_noise_multiplier(1.0, dim=CNN_PARAMS, bits=b, beta=0.6065306597126334, gamma=0.0,
                                         shares=max(1, -(-6 * n // 10)), clip_norm=1.0, sampling="fixed",
                                         num_clients=n, clients_per_round=n)
            s = SecureSum(seed=0, threshold=0.6)
            t0 = time.perf_counter()
            s.begin(1, list(range(n)), clip_norm=1.0, ddg=m)
            for u in range(n):
                s.add(u, clipped, weight=1.0, bit=1)
            r = s.finish()
            wall = time.perf_counter() - t0
            # the sum's error should be the clients' noise and rounding only (no wrap-around): ratio ~1
            err = float((r.total["w"] - n * clipped["w"]).std() / (m.gamma * (n * (m.sigma2 + 0.25)) ** 0.5))
            ups = list(r.uplink_bytes.values())
            row = {"n": n, "bits": b, "gamma": m.gamma, "sigma2": m.sigma2,
                   "upload_bytes_per_client": sum(ups) / n, "ratio_to_float32": sum(ups) / n / (4 * CNN_PARAMS),
                   "error_std_over_noise_std": err, "client_seconds_mean": sum(r.client_seconds.values()) / n,
                   "server_seconds": r.server_seconds, "round_wall_seconds": wall}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


class _CountingDraws:
    def __init__(self, draws) -> None:
        self.draws, self.calls = draws, 0

    def rand(self, shape):
        self.calls += 1
        return self.draws.rand(shape)


def bench_ddg_params(bits: list[int]) -> list[dict]:
    """Accounting only: the noise the DP benchmark's eps 8 needs per bits and beta, and the rounding's retries."""
    import math

    from fed8.privacy.ddg import calibrate_ddg
    from fed8.privacy.ddg_encode import conditional_round
    from fed8.privacy.randomness import SystemDraws
    from fed8.privacy.secagg.ring import rotate

    g = torch.Generator().manual_seed(0)
    v = torch.randn(CNN_PARAMS, generator=g)
    y = rotate(v / v.norm(), torch.randint(0, 2, (CNN_PARAMS,), generator=g).float() * 2 - 1).double()
    out = []
    for b in bits:
        for beta in (0.01, 0.1, math.exp(-0.5), 0.9):
            m = calibrate_ddg(8.0, 15, 1e-5, dim=CNN_PARAMS, bits=b, beta=beta, gamma=0.0, shares=30, clip_norm=1.0,
                              sampling="fixed", num_clients=100, clients_per_round=50.0)
            counting = _CountingDraws(SystemDraws())
            for _ in range(5):
                conditional_round(y / m.gamma, m.bound, counting)
            row = {"bits": b, "beta": beta, "gamma": m.gamma, "noise_multiplier": m.noise_multiplier,
                   "sensitivity_over_clip": m.l2_sensitivity * m.gamma, "noise_std_over_clip": m.noise_std,
                   "rounding_draws_per_encode": counting.calls / 5}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


DDG_ACCOUNTING = ((100, 50, 15), (100, 100, 15), (1000, 100, 100), (1000, 10, 500))


def bench_ddg_accounting(bits: list[int]) -> list[dict]:
    """Accounting only, ``cnn``-sized updates, epsilon 8, delta 1e-5, fixed sampling, t = 60%.

    For each (clients N, per round m, rounds R): the server placement's noise multiplier, the
    distributed mechanism's, its epsilon against the server and against model observers, and
    the noise std on the summed update over C with all m present.
    """
    import math

    from fed8.privacy.accounting import PrivacySpec, calibrate_noise_multiplier
    from fed8.privacy.ddg import calibrate_ddg

    out = []
    for n, m, rounds in DDG_ACCOUNTING:
        z_server = calibrate_noise_multiplier(PrivacySpec("central", "fixed", n, float(m), 1e-5), 8.0, rounds)
        d = calibrate_ddg(8.0, rounds, 1e-5, dim=CNN_PARAMS, bits=bits[0], beta=math.exp(-0.5), gamma=0.0,
                          shares=math.ceil(0.6 * m), clip_norm=1.0, sampling="fixed", num_clients=n,
                          clients_per_round=float(m))
        row = {"clients": n, "per_round": m, "rounds": rounds, "server_placement_z": z_server,
               "distributed_z": d.noise_multiplier, "eps_against_server": d.epsilon_server(rounds, 1e-5),
               "eps_against_model_observers": d.epsilon_observers(rounds, 1e-5),
               "rounds_joined_bound": d.rounds_joined_bound(rounds, 1e-5),
               "distributed_noise_over_clip_all_present": math.sqrt(m * d.sigma2) * d.gamma,
               "rounded_sensitivity_over_clip": d.l2_sensitivity * d.gamma}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["dp", "secagg", "both", "secagg-accuracy", "scale", "ddg", "ddg-repeats",
                                       "ddg-upload", "ddg-params", "ddg-accounting"],
                    default="both")
    ap.add_argument("--bits", type=int, nargs="+", default=[17], help="parts ddg, ddg-upload: privacy.ddg_bits")
    ap.add_argument("--server-z", type=float, help="part ddg: skip the server run, use this noise multiplier")
    ap.add_argument("--same-noise-only", action="store_true", help="part ddg: only the run at the server's noise")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.9],
                    help="part ddg-repeats: privacy.secagg_threshold values")
    ap.add_argument("--repeats", type=int, default=10, help="part ddg-repeats: runs per setting")
    ap.add_argument("--settings", nargs="*", help="part scale: only these SCALE_RUNS names")
    ap.add_argument("--epsilons", nargs="*", type=float, help="part scale: only these target epsilons")
    ap.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                    help="parts dp, ddg: more settings for every run (e.g. model.name=mlp model.hidden=64)")
    ap.add_argument("--n", type=int, nargs="+", default=[10, 50, 100, 200])
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write all rows to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows: dict = {}
    if a.part in ("secagg", "both"):
        rows["secagg"] = bench_secagg(a.n, a.dropout)
    if a.part in ("dp", "both"):
        rows["dp"] = bench_dp(a.threads, a.extra)
    if a.part == "secagg-accuracy":
        rows["secagg_accuracy"] = bench_secagg_accuracy(a.threads)
    if a.part == "scale":
        rows["scale"] = bench_scale(a.threads, a.settings, a.epsilons)
    if a.part == "ddg":
        rows["ddg"] = bench_ddg(a.threads, a.bits, a.server_z, a.same_noise_only, a.extra)
    if a.part == "ddg-repeats":
        rows["ddg_repeats"] = bench_ddg_repeats(a.threads, a.bits[0], a.thresholds, a.repeats, a.extra)
    if a.part == "ddg-params":
        rows["ddg_params"] = bench_ddg_params(a.bits)
    if a.part == "ddg-accounting":
        rows["ddg_accounting"] = bench_ddg_accounting(a.bits)
    if a.part == "ddg-upload":
        rows["ddg_upload"] = bench_ddg_upload(a.n, a.bits)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
