"""Peer column: Apple's pfl-research simulator (``pfl==0.6.0``) on W1 / S8.

Run by ``bench/w1_fedavg.py --peers pfl,pfl-2proc`` with ``bench/peers/.venv-pfl/bin/python``
(made by ``bench/peers/make_venvs.sh``), either as one process (clients one after another)
or under ``torchrun --nproc-per-node 2`` (pfl shards each cohort over the workers and sums
their statistics with all-reduce; 1 torch thread each). Written as pfl's own PyTorch
benchmarks do it: ``PyTorchModel`` (local SGD, central SGD lr 1.0 on the averaged delta),
``FederatedAveraging``, ``SimulatedBackend`` with ``WeightByDatapoints`` (FedAvg's n_k / n),
a cohort of every user each round (``minimize_reuse`` cycles the users in order).

Interleaving: a callback after every central iteration closes pfl's round clock (after the
central evaluation on the last round), and rank 0 runs one plain-loop round with all the
threads while the other ranks wait at a barrier. Prints one JSON line from rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pfl.aggregate.simulate import SimulatedBackend  # noqa: E402
from pfl.aggregate.weighting import WeightByDatapoints  # noqa: E402
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams  # noqa: E402
from pfl.callback.base import TrainingProcessCallback  # noqa: E402
from pfl.data.dataset import Dataset  # noqa: E402
from pfl.data.federated_dataset import FederatedDataset  # noqa: E402
from pfl.data.sampling import get_user_sampler  # noqa: E402
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams  # noqa: E402
from pfl.metrics import Metrics, Weighted  # noqa: E402
from pfl.model.pytorch import PyTorchModel  # noqa: E402

from _common import PeakTreeRSS, PlainLoop, accuracy, build_cnn, load_workload, result  # noqa: E402


class Net(torch.nn.Module):
    """fed8's cnn with the ``loss`` / ``metrics`` pfl's PyTorchModel calls."""

    def __init__(self):
        super().__init__()
        self.net = build_cnn()

    def forward(self, x):
        return self.net(x)

    def loss(self, x, y, eval=False):  # noqa: A002 (pfl's name)
        self.eval() if eval else self.train()
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=True):  # noqa: A002
        self.eval()
        logits = self(x)
        n = len(y)
        return {"loss": Weighted(float(F.cross_entropy(logits, y, reduction="sum")), n),
                "accuracy": Weighted(float((logits.argmax(1) == y).sum()), n)}


class Interleave(TrainingProcessCallback):
    def __init__(self, w, plain, rank, threads, net):
        self.w, self.plain, self.rank, self.threads, self.net = w, plain, rank, threads, net
        self.seconds: list[float] = []
        self.accuracy = None
        self.mark = time.perf_counter()

    def on_train_begin(self, *, model):
        self.mark = time.perf_counter()
        return Metrics()

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        rnd = central_iteration + 1
        if rnd == self.w["rounds"] and self.rank == 0:
            self.accuracy = accuracy(self.net.net, self.w["ex"], self.w["ey"])
        self.seconds.append(time.perf_counter() - self.mark)
        if self.rank == 0:
            torch.set_num_threads(self.threads)
            self.plain.round(rnd)
            torch.set_num_threads(max(1, self.threads // _world()))
        if _world() > 1:
            torch.distributed.barrier()
        self.mark = time.perf_counter()
        return False, Metrics()


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--threads", type=int, default=2, help="threads in all (split over the torchrun workers)")
    a = ap.parse_args()
    rank, world = int(os.environ.get("RANK", "0")), _world()
    torch.set_num_threads(max(1, a.threads // world))
    torch.manual_seed(0)
    w = load_workload(a.workload)
    n = len(w["xs"])
    rss = PeakTreeRSS(root=os.getppid() if world > 1 else None)  # under torchrun: the launcher and its workers
    users = list(range(n))
    data = FederatedDataset(make_dataset_fn=lambda u: Dataset(raw_data=[w["xs"][u], w["ys"][u]], user_id=str(u)),
                            user_sampler=get_user_sampler("minimize_reuse", users),
                            user_id_to_weight={u: int(w["xs"][u].shape[0]) for u in users})
    net = Net()
    net.net.load_state_dict(w["state"])
    params = [p for p in net.parameters() if p.requires_grad]
    model = PyTorchModel(model=net, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(params, 1.0))
    backend = SimulatedBackend(training_data=data, val_data=data, postprocessors=[WeightByDatapoints()])
    plain = PlainLoop(w) if rank == 0 else None
    cb = Interleave(w, plain, rank, a.threads, net)
    t0 = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=w["rounds"], evaluation_frequency=10**9,
                                           train_cohort_size=n, val_cohort_size=0),
        backend=backend, model=model,
        model_train_params=NNTrainHyperParams(local_learning_rate=w["lr"], local_num_epochs=1,
                                              local_batch_size=w["bs"]),
        model_eval_params=NNEvalHyperParams(local_batch_size=500), callbacks=[cb])
    total = time.perf_counter() - t0
    if rank == 0:
        name = "pfl" if world == 1 else f"pfl {world} procs x {max(1, a.threads // world)} thread(s)"
        print(json.dumps(result(name, cb.seconds, plain.seconds, cb.accuracy, rss.stop(), total_s=round(total, 1),
                                threads=a.threads)), flush=True)


if __name__ == "__main__":
    main()
