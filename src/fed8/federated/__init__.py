"""Federated training: the client step, server strategies, sampling, the simulated round loop."""

from .client import ClientData, ClientUpdate, train_client, trainable_keys
from .evaluate import client_accuracy_stats, evaluate
from .sampling import num_sampled, sample_clients
from .simulation import Simulation
from .strategy import FedAdam, FedAvg, FedAvgM, Strategy, StrategyWrapper, WeightedSum, make_strategy

__all__ = [
    "ClientData", "ClientUpdate", "FedAdam", "FedAvg", "FedAvgM", "Simulation", "Strategy", "StrategyWrapper",
    "WeightedSum", "client_accuracy_stats", "evaluate", "make_strategy", "num_sampled", "sample_clients",
    "train_client", "trainable_keys",
]
