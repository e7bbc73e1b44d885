"""Federated training: the client step, aggregators, server optimizers, sampling, the round logic and
its in-process transport."""

from .aggregator import Aggregator, AggregatorWrapper, WeightedMean, WeightedSum
from .client import ClientData, ClientUpdate, LocalTraining, train_client, trainable_keys
from .evaluate import client_accuracy_stats, evaluate
from .optimizer import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, ServerOptimizer, make_optimizer
from .record import RoundRecord
from .round import Reply, RoundLoop, Transport
from .sampling import num_sampled, sample_clients
from .simulation import InProcessTransport, Simulation

__all__ = [
    "Aggregator", "AggregatorWrapper", "ClientData", "ClientUpdate", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedYogi",
    "InProcessTransport", "LocalTraining", "Reply", "RoundLoop", "RoundRecord", "ServerOptimizer", "Simulation",
    "Transport", "WeightedMean", "WeightedSum", "client_accuracy_stats", "evaluate", "make_optimizer",
    "num_sampled", "sample_clients", "train_client", "trainable_keys",
]
