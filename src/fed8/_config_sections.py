"""The sections of a fed8 configuration: one frozen dataclass each.

Every key carries its documentation and its allowed values in the field metadata
(``_key``); :mod:`fed8.config` validates, loads and writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = [
    "AttackConfig", "CompressionConfig", "DEPLOY_FORMATS", "DataConfig", "EvalConfig", "FederationConfig",
    "ModelConfig",
    "PrivacyConfig", "QuantizeConfig", "RunConfig", "ServerConfig", "TrainConfig",
]


def _key(default: Any, doc: str, **rules: Any) -> Any:
    """A config field: default value, one-line doc, and validation rules.

    Rules: ``choices`` (allowed values), ``gt``/``ge``/``lt``/``le`` (numeric bounds),
    ``hint`` (what to do instead, appended to errors).
    """
    return field(default=default, metadata={"doc": doc, **rules})


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split across clients."""

    source: str = _key(
        "mnist10k",
        "dataset source: mnist10k (bundled) | idx (MNIST-format folder) | cifar10 "
        "(CIFAR-10 binary folder) | folder (root/<class>/*.png|jpg) | npz",
        choices=("mnist10k", "idx", "cifar10", "folder", "npz"),
    )
    path: str = _key("", "file or folder for idx, cifar10, folder and npz; must stay empty for mnist10k (the bundled "
                         "images)")
    partition: str = _key(
        "dirichlet",
        "how training images are split across clients: iid | dirichlet (label skew, "
        "see alpha) | shards (k label-sorted shards per client, McMahan et al. 2017) | natural (the data's own "
        "clients: an npz client_train array, one client id per training image; data.num_clients = their number)",
        choices=("iid", "dirichlet", "shards", "natural"),
    )
    alpha: float = _key(
        0.5,
        "Dirichlet concentration for partition = dirichlet; smaller = more skew "
        "(0.1 strong, 0.5 moderate, 100 ~ iid)",
        gt=0.0,
        hint="Use e.g. 0.5 for moderate skew.",
    )
    shards_per_client: int = _key(2, "label-sorted shards per client for partition = shards", ge=1)
    num_clients: int = _key(20, "number of simulated clients", ge=1)
    test_fraction: float = _key(
        0.2, "fraction of each client's images kept as its local test split", ge=0.0, lt=1.0
    )
    eval_fraction: float = _key(
        0.2,
        "fraction held out as the server eval split when the source has no test split "
        "(mnist10k always uses its fixed 8000/2000 split)",
        gt=0.0,
        lt=1.0,
    )
    num_classes: int = _key(
        0, "classes the labels must lie in (0..num_classes-1); 0 = what the source declares: 10 for mnist10k, idx "
        "(MNIST format) and cifar10, the subfolders for folder, a 'classes' array in an npz (else its max label + 1)",
        ge=0, le=100_000)
    image_size: int = _key(32, "side in pixels that folder images are resized to (folder only: other sources keep "
                               "their size, and another value with them is an error)", ge=4, le=1024)
    subset: int = _key(
        0, "use only the first N training images after shuffling (0 = all); for quick tries", ge=0
    )


_BUILTIN_MODELS = ("cnn", "resnet20", "mlp", "vit_tiny")


def _check_model_name(name: str, value: str) -> None:
    if ":" in value:
        if not re.match(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", value):
            raise ConfigError(f"{name} = {value!r} is not an import path: use the form 'package.module:function' "
                              "(e.g. 'mynets.small:build'), or a built-in model.")
    elif value not in _BUILTIN_MODELS:
        raise ConfigError(f"{name} must be one of {', '.join(repr(m) for m in _BUILTIN_MODELS)} or your own model as "
                          f"'package.module:function'; got {value!r}.")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to train; input shape and class count come from the data."""

    name: str = _key(
        "cnn",
        "cnn (McMahan et al. 2017 CNN) | resnet20 (CIFAR-style ResNet) | mlp (2 hidden layers) | vit_tiny (a 4-block "
        "ViT of width 192, 4x4 patches, for 28x28 and 32x32 images) | your own: 'package.module:function', called "
        "as function(in_channels=, height=, width=, num_classes=) and returning a torch.nn.Module that gives logits "
        "(the module is imported: installed, on PYTHONPATH or in the current folder; a Flower node imports it only "
        "if its node config lists it in models)",
        validate=_check_model_name,
    )
    norm: str = _key(
        "batch",
        "normalization in resnet20: batch | group (GroupNorm; better for non-IID data and DP)",
        choices=("batch", "group"),
    )
    hidden: int = _key(200, "hidden units per layer of the mlp", ge=1, le=16384)


@dataclass(frozen=True)
class TrainConfig:
    """Rounds and the local training each sampled client does."""

    rounds: int = _key(20, "number of federated rounds", ge=1)
    fraction: float = _key(0.5, "fraction of clients sampled each round", gt=0.0, le=1.0)
    local_epochs: int = _key(2, "local epochs E per round on each sampled client", ge=1)
    local_epochs_min: int = _key(
        0, "unequal local work (systems heterogeneity: slow or busy devices finish less): each sampled client trains "
        "a number of epochs drawn uniformly from local_epochs_min..local_epochs every round, from (seed, round, "
        "client), as in FedNova's experiments (Wang et al. 2020: 2..5); 0 = every client trains local_epochs. "
        "SCAFFOLD and FedNova count each client's own steps", ge=0)
    batch_size: int = _key(32, "local minibatch size B", ge=1)
    lr: float = _key(0.05, "client SGD learning rate", gt=0.0)
    lr_schedule: str = _key(
        "constant", "the client learning rate round by round: constant | exponential (lr * lr_decay^(round - 1)) | "
        "cosine (from lr in round 1 toward 0 after the last of train.rounds, Loshchilov & Hutter 2017)",
        choices=("constant", "exponential", "cosine"))
    lr_decay: float = _key(0.99, "factor per round for lr_schedule = exponential", gt=0.0, le=1.0)
    momentum: float = _key(0.9, "client SGD momentum (reset every round)", ge=0.0, lt=1.0)
    weight_decay: float = _key(0.0, "client SGD weight decay (L2)", ge=0.0)
    prox_mu: float = _key(
        0.0, "FedProx proximal term mu (Li et al. 2020); 0 = off (plain FedAvg client)", ge=0.0
    )
    scaffold: bool = _key(
        False, "SCAFFOLD (Karimireddy et al. 2020): control variates correct each local step for client drift on "
        "non-IID data; clients keep theirs, the server sends c with the model (float32) and derives its own from the "
        "updates, so the upload is unchanged; use a smaller lr than FedAvg's (0.01 with momentum 0.9 was stable where "
        "0.05 diverged); not with DP, secure aggregation, median / trimmed_mean or torchrun")
    feddyn_alpha: float = _key(
        0.0, "FedDyn (Acar et al. 2021) regularization alpha; 0 = off. Each client keeps its own gradient estimate g_k, "
        "subtracts it from every local gradient and trains with a proximal term alpha toward the global model; the "
        "server derives its state h from the updates (upload and download unchanged; under secure aggregation from the "
        "sums, with privacy.weighting = uniform); typical 0.01-0.1; not with prox_mu, SCAFFOLD, FedNova, DP, median / "
        "trimmed_mean or torchrun", ge=0.0)
    precision: str = _key(
        "float32", "precision of the clients' forward and backward passes: float32 | bfloat16 (mixed precision under "
        "torch.autocast: convolutions and matrix products in bfloat16, weights, gradients, optimizer state and updates "
        "in float32; fast on CPUs with AMX or AVX512-BF16 and on GPUs, slow on CPUs without them; evaluation stays "
        "float32)", choices=("float32", "bfloat16"))
    augment: str = _key(
        "none", "augmentation of the clients' training images, drawn anew each epoch from (seed, round, client): none | "
        "crop (random crop after padding by augment_pad pixels: shifts of up to augment_pad) | flip (horizontal, "
        "p = 0.5) | crop_flip (both: the CIFAR-10 recipe of He et al. 2016; flips suit natural images, not digits)",
        choices=("none", "crop", "flip", "crop_flip"))
    augment_pad: int = _key(
        0, "pixels of padding on each side for augment = crop | crop_flip; 0 = min(height, width) // 8 (4 for 32x32 "
        "images, 3 for 28x28); at most half the side", ge=0)
    sampling: str = _key(
        "fixed", "client sampling: fixed (round(fraction * clients) per round, without replacement) | "
        "poisson (each client joins with probability fraction; the DP accountant matches it; not with "
        "privacy.noise_placement = distributed)",
        choices=("fixed", "poisson"))


#: server.strategy's adaptive optimizers (fed8.federated.optimizer.ADAPTIVE, named here without importing torch)
ADAPTIVE_STRATEGIES = ("fedadagrad", "fedadam", "fedyogi")


@dataclass(frozen=True)
class ServerConfig:
    """How the server turns the averaged client update into the next global model."""

    strategy: str = _key(
        "fedavg",
        "fedavg (McMahan et al. 2017) | fedavgm (server momentum, Hsu et al. 2019) | fedadagrad | fedadam | "
        "fedyogi (adaptive server optimizers, Reddi et al. 2021)",
        choices=("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"),
    )
    lr: float = _key(
        0.0, "server learning rate; 0 = auto: 1 for fedavg and fedavgm (fedavg with lr = 1 is exactly the weighted "
        "average), 0.01 for fedadam and fedyogi, 0.1 for fedadagrad (an adaptive step moves each weight by about lr "
        "a round; the best of a grid on the default run)",
        ge=0.0
    )
    momentum: float = _key(0.9, "server momentum beta for fedavgm", ge=0.0, lt=1.0)
    beta1: float = _key(0.9, "first-moment decay for fedadagrad, fedadam and fedyogi (0 = no server momentum)",
                        ge=0.0, lt=1.0)
    beta2: float = _key(0.99, "second-moment decay for fedadam and fedyogi", ge=0.0, lt=1.0)
    tau: float = _key(1e-3, "adaptivity (epsilon) of fedadagrad, fedadam and fedyogi", gt=0.0)
    fednova: bool = _key(
        False, "normalized averaging (FedNova, Wang et al. 2020): each update divided by its client's local steps (how "
        "far they reach under momentum, weight decay and prox_mu), the mean rescaled to the clients' average steps, so a "
        "client counts by its weight alone, not by its weight times its step count (FedAvg's bias toward clients with "
        "more data, which take more steps). Server-side only: "
        "clients and bytes are unchanged. Not with DP, secure aggregation, median or trimmed_mean")
    robust: str = _key(
        "none", "robust aggregation: none | norm_bound (clip each update to norm_bound) | median "
        "(coordinate-wise) | trimmed_mean (drop trim_fraction largest and smallest per coordinate)",
        choices=("none", "norm_bound", "median", "trimmed_mean"))
    norm_bound: float = _key(1.0, "L2 bound of each update for robust = norm_bound", gt=0.0)
    trim_fraction: float = _key(0.2, "fraction trimmed at each end for robust = trimmed_mean", ge=0.0, lt=0.5)


#: Clients per round from which ``privacy.adaptive_clipping = auto`` turns adaptive clipping on under central DP:
#: measured at 100 (1,000 clients, q = 0.1: 0.930 at epsilon 8 against 0.837 with a fixed clip_norm of 1.0;
#: docs/BENCHMARKS.md, PRIVACY AT SCALE). Below, the noised count of unclipped clients (std >= m / 20) is
#: coarse and was not measured to help, so auto leaves the fixed clip_norm.
ADAPTIVE_AUTO_MIN_CLIENTS = 100


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy and secure aggregation."""

    dp: str = _key(
        "auto", "differential privacy: auto (central when target_epsilon or noise_multiplier is set, else none) | "
        "none | central (server adds noise to the clipped sum; DP-FedAvg, McMahan et al. 2018) | local (each "
        "client adds noise to its own clipped update)",
        choices=("auto", "none", "central", "local"))
    clip_norm: float = _key(1.0, "L2 norm C each client update is clipped to (DP and secure aggregation)",
                            gt=0.0)
    noise_multiplier: float = _key(
        0.0, "Gaussian noise std / clip_norm (z); 0 with target_epsilon > 0 = computed from the budget",
        ge=0.0)
    target_epsilon: float = _key(
        0.0, "privacy budget epsilon for the planned rounds; 0 = no budget (then noise_multiplier is "
        "required)", ge=0.0)
    delta: float = _key(1e-5, "delta of the reported (epsilon, delta); keep it below 1 / clients", gt=0.0, lt=1.0)
    accountant: str = _key("rdp", "privacy accountant from dp-accounting: rdp | pld (tighter, slower)",
                           choices=("rdp", "pld"))
    budget: str = _key(
        "refuse", "when noise_multiplier and target_epsilon are both set and the planned rounds would exceed "
        "the budget: refuse (do not start) | stop (train up to the last round within budget)",
        choices=("refuse", "stop"))
    weighting: str = _key(
        "auto", "aggregation weights: auto (samples without DP, uniform with DP) | uniform | capped "
        "(min(1, n_k / weight_cap)) | samples (n_k; not allowed with DP: unbounded sensitivity)",
        choices=("auto", "uniform", "capped", "samples"))
    weight_cap: int = _key(0, "samples at which a client's weight caps at 1 for weighting = capped: a public "
                           "number you choose (required for capped; never taken from the clients' data)", ge=0)
    adaptive_clipping: str = _key(
        "auto", "adapt clip_norm to a quantile of the update norms (Andrew et al. 2021; its cost is accounted): "
        f"auto (on with dp = central, noise_placement = server and >= {ADAPTIVE_AUTO_MIN_CLIENTS} clients per round, "
        "where it was measured to help; off otherwise) | on | off (true / false are read as on / off)",
        choices=("auto", "on", "off"), bool_alias={True: "on", False: "off"})
    adaptive_quantile: float = _key(0.5, "target quantile gamma of the update norms", gt=0.0, lt=1.0)
    adaptive_lr: float = _key(0.2, "step eta of the geometric clip-norm update", gt=0.0)
    adaptive_count_stddev: float = _key(
        0.0, "noise std sigma_b on the count of unclipped clients; 0 = max(clients per round / 20, 1.58 z) (the "
        "paper's m / 20, capped so the count spends at most 10% of the budget; under noise_placement = distributed "
        "max(m / 20, 1.5 z) in all, added by the clients as t integer shares)", ge=0.0)
    secure_aggregation: bool = _key(
        False, "secure aggregation (Bonawitz et al. 2017): the server only learns the sum of the int8, "
        "shared-scale updates, summed in Z_(2^k)")
    secagg_adaptive_clip: bool = _key(
        True, "secure aggregation without DP: adapt clip_norm every round toward the 0.9 quantile of the update "
        "norms (noise-free adaptive clipping, Andrew et al. 2021, step 1.0, from the securely summed clip bits), "
        "starting at clip_norm; false = clip every update to the fixed clip_norm")
    secagg_min_clients: int = _key(
        3, "participation floor of secure aggregation: a sum of fewer inputs is never unmasked (the round is "
        "abandoned); must be <= the clients per round", ge=2)
    secagg_threshold: float = _key(
        0.6, "t as a fraction of each round's participants: any t can unmask, so up to n - t may drop",
        gt=0.0, le=1.0)
    noise_placement: str = _key(
        "server", "with dp = central and secure aggregation: server (noise added to the unmasked sum) | "
        "distributed (the distributed discrete Gaussian, Kairouz et al. 2021: each client adds exact integer "
        "noise to its rounded update, so no one sees a noiseless sum; the ddg_* keys; needs train.sampling = "
        "fixed)",
        choices=("server", "distributed"))
    ddg_bits: int = _key(
        17, "distributed: the modulus 2^b of the secure sum, so the bits each client sends per value (17: 0.53x a "
        "float32 upload, the most within 0.55x; fewer bits force a coarser grid, whose rounding costs noise: "
        "measured in docs/BENCHMARKS.md)", ge=8, le=30)
    ddg_gamma: float = _key(
        0.0, "distributed: the grid step (scaling 1 / gamma before rounding to integers); 0 = the finest that keeps "
        "a round's sum inside the modulus except with probability 1e-9", ge=0.0)
    ddg_beta: float = _key(
        0.6065306597126334, "distributed: the conditional rounding's bias bound beta (the rounded update's norm is "
        "bounded with probability 1 - beta per draw; the paper's exp(-0.5))", gt=0.0, lt=1.0)
    insecure_reproducible_noise: bool = _key(
        False, "TESTS AND BENCHMARKS ONLY: draw DP noise and DP sampling from run.seed instead of the OS CSPRNG, "
        "so runs repeat bit for bit; anyone who knows the seed can remove the noise: the run has NO privacy")
    secagg_dropout: float = _key(0.0, "simulated fraction of secure-aggregation participants that drop",
                                 ge=0.0, lt=1.0)
    secagg_dropout_phase: str = _key(
        "after_input", "when simulated dropouts happen: before_input (their update is lost) | after_input "
        "(counted; they just do not help unmask)", choices=("before_input", "after_input"))
    client_reports: str = _key(
        "auto", "whether clients send the server numbers from their data outside training, which DP and secure "
        "aggregation do not cover: their training loss (and, under secure aggregation, sample count) every round, "
        "each evaluated round's correct-prediction count on their local test split (and after fine-tuning, "
        "eval.finetune_epochs), and the quantize stage's "
        "calibration statistics and on-device accuracies. auto (off under DP or secure "
        "aggregation: clients report nothing else, calibration and evaluation use the server's eval split; on "
        "otherwise) | on (the privacy statement names them as not covered) | off",
        choices=("auto", "on", "off"))

    def __post_init__(self) -> None:
        # dp = auto: a noise level or a budget means DP was asked for (central, the common case).
        if self.dp == "auto":
            asked = self.target_epsilon > 0 or self.noise_multiplier > 0
            object.__setattr__(self, "dp", "central" if asked else "none")


@dataclass(frozen=True)
class AttackConfig:
    """Simulated malicious clients, to test robust aggregation."""

    fraction: float = _key(0.0, "fraction of clients that are malicious (chosen once from the seed)",
                           ge=0.0, le=1.0)
    kind: str = _key("sign_flip", "what malicious clients send: sign_flip (-scale x update) | non_finite (NaN values)",
                     choices=("sign_flip", "non_finite"))
    scale: float = _key(10.0, "scale of the sign-flipped update", gt=0.0)


_CODEC_DOC = (
    "float32 (exact, 4 bytes/value) | float16 | bfloat16 (2 bytes) | int8 (1 byte + float32 scale per "
    "granularity group; rounding nearest or stochastic) | float8_e4m3fn | float8_e5m2 (1 byte, scaled so "
    "the group's max lands on 448 / 57344) | topk (keep topk_fraction of entries, int8 values, packed indices)"
)
_CODECS = ("float32", "float16", "bfloat16", "int8", "float8_e4m3fn", "float8_e5m2", "topk")


@dataclass(frozen=True)
class CompressionConfig:
    """What crosses the network: codecs for client updates (uplink) and model broadcasts (downlink)."""

    uplink: str = _key("float32", "codec of client updates: " + _CODEC_DOC, choices=_CODECS)
    downlink: str = _key("float32", "codec of the global model sent to clients (same choices as uplink)",
                         choices=_CODECS)
    downlink_mode: str = _key(
        "full", "full: send the (encoded) model | delta: send the encoded change since the model the clients "
        "already hold (clients that missed a round get the full model in float32)", choices=("full", "delta"))
    error_feedback: bool = _key(
        False, "clients keep what the uplink codec dropped and add it next time (Karimireddy et al. 2019); "
        "residuals live on disk in <run>/residuals")
    granularity: str = _key("channel", "scale groups of int8 / float8 codecs: tensor | channel (axis 0) | block",
                            choices=("tensor", "channel", "block"))
    block_size: int = _key(256, "elements per scale when granularity = block", ge=1)
    rounding: str = _key("nearest", "int8 / topk rounding: nearest (half to even) | stochastic (unbiased)",
                         choices=("nearest", "stochastic"))
    topk_fraction: float = _key(0.1, "fraction of entries the topk codec keeps per tensor", gt=0.0, le=1.0)


@dataclass(frozen=True)
class EvalConfig:
    """When and how the global model is evaluated."""

    every: int = _key(
        1,
        "evaluate every N rounds (the last round is always evaluated); 0 = only the last round",
        ge=0,
    )
    batch_size: int = _key(500, "batch size for evaluation", ge=1)
    finetune_epochs: int = _key(
        0, "after the last round, every client fine-tunes the global model this many epochs on its own training "
        "images (the run's local SGD, plain) and evaluates it on its local test split: client_accuracy_finetuned_mean "
        "/ p10 / min, what adapting to each client adds to one global model (FedAvg-FT); 0 = off. A client report: "
        "needs privacy.client_reports (off by default under DP or secure aggregation)", ge=0)


DEPLOY_FORMATS = ("int8", "float8_e4m3fn", "float8_e5m2", "litert_int8", "litert_fp32", "torch_float8_e4m3fn")


def _check_formats(name: str, value: str) -> None:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in DEPLOY_FORMATS]
    if bad or not items:
        raise ConfigError(
            f"{name} must list formats from {', '.join(DEPLOY_FORMATS)} separated by commas; got {value!r}"
            + (f" ({bad[0]!r} is not a format" + ("; name the FP8 format exactly" if "fp8" in bad[0].lower() else "")
               + ")" if bad else "") + "."
        )


@dataclass(frozen=True)
class QuantizeConfig:
    """8-bit deployment after training: ONNX export, federated calibration, INT8 / FP8 models."""

    enabled: bool = _key(True, "run the quantize stage at the end of fed8 run")
    formats: str = _key(
        "int8,float8_e4m3fn,float8_e5m2,litert_int8",
        "comma-separated formats to build: int8, float8_e4m3fn, float8_e5m2 (ONNX), litert_int8 (full-integer "
        ".tflite for phones; needs pip install 'fed8[litert]', skipped with a note without it), litert_fp32 "
        "(float .tflite, for reference), torch_float8_e4m3fn (PyTorch module whose Linear layers compute in FP8 "
        "with torch._scaled_mm: real FP8 on GPUs of compute capability >= 8.9; not in the default list)",
        validate=_check_formats,
    )
    calibration: str = _key(
        "percentile",
        "activation ranges: minmax (merged min/max) | percentile (cut calibration_percentile of "
        "the merged histogram) | entropy (KL-optimal threshold, TensorRT-style)",
        choices=("minmax", "percentile", "entropy"),
    )
    calibration_percentile: float = _key(
        99.999, "percent of activation values the range keeps when calibration = percentile", gt=50.0, le=100.0
    )
    calibration_samples_per_client: int = _key(
        64, "images each client runs through the model to compute its activation statistics", ge=1
    )
    centralized_calibration: bool = _key(
        False, "calibrate on the server's eval split instead of on the clients (for comparison)"
    )
    fp8_weight_scale: str = _key(
        "mse", "FP8 weight scale per output channel: amax | percentile | mse (search for least error)",
        choices=("amax", "percentile", "mse"),
    )
    fp8_activation_scale: str = _key(
        "auto",
        "FP8 activation scale: amax (range fills the format) | std (ONNX Runtime's rule: match the "
        "standard deviation) | auto (build both, keep the one more accurate on the clients' data)",
        choices=("auto", "amax", "std"),
    )
    max_accuracy_drop: float = _key(
        1.0, "accuracy points a format may lose against float32 before layers are kept in float", ge=0.0
    )
    int8_graph_tuning: bool = _key(
        True, "before INT8 quantization, rewrite the float graph into an equivalent one that ONNX Runtime's CPU "
        "integer kernels run faster (first conv+relu+2x2 maxpool as a space-to-depth conv and a uint8 max pool over "
        "the pixel phases; "
        "flatten in NHWC order); the integers computed are the same"
    )
    int8_reduce_range: str = _key(
        "auto", "INT8 weights in 7 bits ([-64, 64]) instead of 8: ONNX Runtime's uint8 x int8 kernels on x86 CPUs "
        "without VNNI (AVX2: AMD Zen 2/3, Intel before Cascade Lake) add pairs of products in 16 bits with "
        "saturation, which silently corrupts 8-bit weights' results. auto (on where the machine that builds and "
        "measures the models is such a CPU) | on (for models deployed to such CPUs) | off (for VNNI x86 and ARM)",
        choices=("auto", "on", "off"))
    threads: int = _key(2, "inference threads for evaluation and latency (ONNX Runtime and OpenVINO)", ge=1)
    openvino: str = _key(
        "off",
        "also measure every format on the OpenVINO CPU runtime (pip install 'fed8[openvino]'): off (default, so "
        "that what is installed does not change a run's output) | auto (when installed) | on (error if not "
        "installed); its INT8 model is the untuned QDQ graph "
        "(int8_openvino.onnx when int8_graph_tuning rewrote int8.onnx for ONNX Runtime)",
        choices=("auto", "on", "off"),
    )


@dataclass(frozen=True)
class FederationConfig:
    """Rounds over real machines (fed8 federation, Flower): deadlines, dropouts, retries."""

    round_timeout_s: float = _key(
        600.0, "seconds a round waits for the clients' replies; a missing reply is a dropout (messages "
        "expire after this too, so a late one cannot reach a later round)", gt=0.0)
    min_replies: int = _key(
        1, "fewest replies a round is aggregated with; below it the missing clients are asked again "
        "(round_retries times, restarted nodes found by partition id), then the run stops with its last "
        "committed round kept (fed8 federation --resume continues it)", ge=1)
    round_retries: int = _key(
        1, "times a round short of min_replies asks its missing clients again before the run stops", ge=0)


@dataclass(frozen=True)
class RunConfig:
    """Seed, threads and where the run directory goes."""

    seed: int = _key(0, "seed of every random choice (sampling, init, shuffling)", ge=0)
    threads: int = _key(0, "torch CPU threads; 0 = number of cores", ge=0)
    device: str = _key(
        "auto", "where clients train and models are evaluated: auto (cuda when available) | cpu | cuda; the "
        "server side (aggregation, DP, secure aggregation, codecs) runs on the CPU. Bit-identical repeats are a "
        "CPU promise", choices=("auto", "cpu", "cuda"))
    client_batching: str = _key(
        "off", "train a round's sampled clients together: a round whose clients each take one local step, under a "
        "plain weighted mean, as one pass; otherwise torch.func (vmap over clients, masked ragged clients). auto "
        "(both where the model allows, no BatchNorm, and vmap only where it is faster: not for convolutional "
        "models on the CPU; else sequential, reason logged once) | on (vmap wherever the model allows) | off "
        "(one client after another, bit-identical to fed8 federation)", choices=("auto", "on", "off"))
    client_batch_size: int = _key(
        0, "clients per batched chunk; 0 = auto (per-client state of the chunk within 192 MiB)", ge=0)
    parallel_clients: int = _key(
        0, "clients trained at the same time on threads of this process, each on threads / parallel_clients torch "
        "threads (a small client's steps do not fill several cores; one torch thread each avoids OpenMP's barriers). "
        "0 = auto: min(threads, clients per round) on the CPU (per-client state within 1 GiB), 1 on a GPU; 1 = one "
        "client after another on every thread. A client's update depends on its thread count, not on what runs beside "
        "it: runs stay deterministic, and fed8 federation's nodes in local trials train with the same count", ge=0)
    out: str = _key(
        "runs", "parent folder of run directories (each run gets runs/<time>-<model>-<data>)"
    )
