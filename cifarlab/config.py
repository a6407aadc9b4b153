"""Every knob of a run as dataclasses, with YAML recipes and `key=value` overrides.

Resolution order (later wins): defaults → recipe → --config FILE → CLI flags → --set.
The fully resolved config is saved in the run directory, so a run can always be repeated.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .errors import CifarlabError
from .fileio import read_text
from .models import check_model_name, model_options

RECIPE_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "fast"
SEMI_RECIPE = "fast-semi"  # the default when semi.method is asked for (fast's label smoothing would mask every pseudo-label)

# The allowed values of every setting that is a choice: validation, `_coerce` and the CLI's
# `choices=` all read them from here (`choices("train.tta")`).
PaddingMode = Literal["reflect", "zeros"]
Flip = Literal["none", "random", "alternating"]
PolicyName = Literal["none", "autoaugment", "randaugment", "trivialaugment", "augmix"]
OptimizerName = Literal["sgd", "adam", "adamw"]
Schedule = Literal["constant", "step", "cosine", "linear"]
Precision = Literal["auto", "fp32", "bf16"]
TTA = Literal["none", "flip", "flip-translate"]
Strategy = Literal["linear", "full", "gradual"]
QuantBackend = Literal["onnxruntime", "pt2e"]
ActiveStrategy = Literal["random", "entropy", "margin", "coreset"]  # labels/strategies.py says what each picks
AdversarialMethod = Literal["none", "fgsm", "nfgsm", "pgd"]
SemiMethod = Literal["none", "fixmatch", "pseudo", "selftrain"]


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | cifar100 | cifar100-coarse; a class subset: cifar10:cat,dog; folder:PATH (own images)
    data_dir: str | None = None  # None: $CIFARLAB_DATA, ./data, ~/.cache/cifarlab, else download
    val_size: int | None = None  # held out of train for model selection; None = 10% (5,000 for CIFAR-10)
    calib_size: int = 0  # held out of train only to fit the temperature of probabilities (at most a tenth); 0 = none
    train_subset: int | None = None  # train on a stratified subset of this many images
    labels_per_class: int | None = None  # labelled images per class (few labels): val and calib are carved from them; the rest of train is the unlabelled pool
    labelled_indices: str | None = None  # JSON list of positions in the training file: train on these only (val/calib carved from them)
    image_size: int = 32  # folder: images are resized to this side (CIFAR is 32×32)
    split_seed: int = 0  # fixes the val split and the subset, whatever the training seed
    mean: list[float] | None = None  # normalization; None = the dataset's published train statistics
    std: list[float] | None = None

    @property
    def few_labels(self) -> list[str]:
        """The FEW_LABEL_KEYS this config sets (a valid one sets at most one)."""
        return [key for key in FEW_LABEL_KEYS if getattr(self, key) is not None]


@dataclass
class AugmentConfig:
    translate: int = 4  # random crop with this much padding = a shift of up to N px
    padding_mode: PaddingMode = "reflect"  # zeros: black, as torchvision's RandomCrop
    flip: Flip = "random"  # alternating (airbench): each image flips every other epoch
    cutout: int = 0  # side of a zeroed square per image; 0 = off
    policy: PolicyName = "none"  # drawn per image; autoaugment is its CIFAR-10 policy
    policy_fraction: float = 1.0  # the policy's share of images, drawn per image and view; the rest pass unchanged
    randaugment_ops: int = 2  # RandAugment: ops per image (N)
    randaugment_magnitude: int = 9  # RandAugment: magnitude bin of 0..30 (M)
    random_erasing: float = 0.0  # probability per image of zeroing a random rectangle (Zhong et al. 2020); 0 = off
    mixup_alpha: float = 0.0  # Mixup: blend with a partner image by λ ~ Beta(α, α), soft targets; 0 = off
    cutmix_alpha: float = 0.0  # CutMix: paste a box of (1-λ) of a partner image; with Mixup, half the images each
    augmix_width: int = 3  # AugMix: chains of ops mixed per image
    augmix_depth: int = 3  # AugMix: each chain has 1 to this many ops
    augmix_severity: int = 3  # AugMix: op magnitudes from the lowest this many of torchvision's 10 bins
    augmix_alpha: float = 1.0  # AugMix: Dirichlet(α) weights of the chains, Beta(α, α) weight against the original
    noise_sigma: float = 0.0  # Gaussian pixel noise (of [0, 1] images), σ uniform in [0, this] per image; 0 = off
    impulse_amount: float = 0.0  # salt and pepper: a share U(0, this) per image of pixel values set to 0 or 1; 0 = off
    brightness: float = 0.0  # every pixel value of an image shifted by U(-this, this) (of the [0, 1] range); 0 = off
    contrast: float = 0.0  # an image's deviations from the dataset mean scaled by U(1 - this, 1 + this); 0 = off


@dataclass
class ModelConfig:
    name: str = "resnet20"  # any name from `cifarlab models`
    options: dict = field(default_factory=dict)  # extra keyword arguments for the model builder
    resized: dict = field(default_factory=dict)  # layers a channel-pruned net has shrunk: {module path: {size: value}}


@dataclass
class OptimConfig:
    name: OptimizerName = "sgd"  # for every group that does not ask for muon in `groups`
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum for SGD
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/AdamW
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # also decay norm weights and biases (usually hurts)
    schedule: Schedule = "cosine"  # after warmup
    warmup_epochs: float = 0.0  # linear warmup from 0; with `linear` this is the one-cycle shape
    milestones: list[float] = field(default_factory=list)  # `step`: epochs where lr is multiplied by gamma
    gamma: float = 0.1
    final_lr_factor: float = 0.0  # `cosine`/`linear` end at lr × this
    per_1024: bool = False  # lr and weight_decay are per 1024 examples (scale with batch); wd decoupled from lr
    groups: dict = field(default_factory=dict)  # per-role overrides, e.g. {head: {lr: 2.0}, filters: {optimizer: muon}}
    label_smoothing: float = 0.0
    jsd_weight: float = 0.0  # AugMix's Jensen-Shannon loss over the clean image + 2 AugMix views (paper: 12); 0 = off
    distill_from: str | None = None  # knowledge distillation: a finished run (or checkpoint) whose softened predictions the net learns too; None = off
    distill_weight: float = 0.5  # with distill_from: loss = (1 - this) × cross-entropy + this × T² × KL(teacher ‖ net) at temperature T
    distill_temperature: float = 4.0  # T: softens both nets' predictions, so the teacher's view of the wrong classes counts
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    ema_decay: float = 0.0  # exponential moving average of weights for evaluation, per step; 0 = off
    lookahead_every: int = 0  # airbench lookahead: average weights every N steps and copy back; 0 = off
    lookahead_start_epoch: float = 3.0  # begin averaging here (early averaging slows learning)
    lookahead_decay: float = 0.95  # per-step decay at the end of training; weaker before (× progress**power)
    lookahead_power: float = 3.0


@dataclass
class FinetuneConfig:
    source: str | None = None  # start from: a run/checkpoint | torchvision:<model>[:<weights>] | timm:<name> | a weights file; None = from scratch
    arch: str | None = None  # the architecture a weights-file source was saved from (a `cifarlab models` name, torchvision:/timm:)
    strategy: Strategy = "full"  # linear: train the new head only; gradual: unfreeze the layers from the top down
    layer_decay: float = 1.0  # each pretrained layer's lr is the next higher one's × this (layer-wise lr decay); 1 = off
    unfreeze_every: float = 1.0  # gradual: epochs between unfreezing one more layer
    freeze_bn: bool = False  # BatchNorm layers keep the source's statistics (always in eval mode)
    input_size: int | None = None  # torchvision/timm nets: upsample the images to this side first (e.g. 224); None = as they are
    cifar_stem: bool = False  # torchvision ResNets: a fresh 3×3 stride-1 first conv and no max-pool, for 32×32 inputs
    keep_head: bool = False  # keep the source's classifier when the classes are its own (fine-tuning a pruned net)
    keep_zeros: bool = False  # conv and linear weights that are zero in the source stay zero (a sparse, pruned net)


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 500
    seed: int = 0  # drives init, order and augmentation; one seed, one result
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"  # auto: bf16 autocast where the device multiplies bf16 natively (CUDA, CPUs with AMX or AVX-512 BF16), else fp32; a run records what it resolved to
    channels_last: bool = True  # NHWC: the fast layout for oneDNN on CPU and tensor cores on GPU
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)
    deterministic: bool = False  # torch.use_deterministic_algorithms (CPU runs repeat exactly anyway)
    threads: int = 0  # CPU threads for torch; 0 = torch's default (all cores)
    reuse_memory: bool = True  # keep freed memory in the process for the next step (CPU: no page faults on it; engine/runtime.py)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch, not each rank's slice (CUDA)
    log_every: int = 50  # steps between metrics.jsonl lines
    checkpoint_every: int = 0  # steps between mid-epoch `last` checkpoints; 0 = at epoch ends only
    checkpoint_epochs: int = 1  # epochs between epoch-end `last` checkpoints; 0 = after the final epoch only
    tta: TTA = "none"  # final test evaluation: flip adds the mirror image, flip-translate also 1-px shifts
    low_res: int = 0  # train the first epochs on images shrunk to this side in pixels (cheaper steps); 0 = off
    low_res_share: float = 0.0  # the share of the epochs, from the first, at low_res: round(share × epochs) of them
    drop_easy: float = 0.0  # leave out this share of the training images, the easiest to the model, in the last epochs; 0 = off
    drop_easy_share: float = 0.0  # the share of the epochs, from the last, without them: round(share × epochs), never the first
    tta_share: float = 1.0  # the share of each test batch, least sure images first, that gets the TTA views (1: all)
    out: str | None = None  # run directory; None = runs/<recipe>
    tensorboard: bool = False  # log scalars and a few images live to <out>/tensorboard (`tensorboard --logdir runs`)
    report: bool = True  # write <out>/report.html after the final test (`cifarlab report` writes it later)
    calibrate: bool = True  # before the final test, fit a temperature on data.calib_size's images, else on val (if any)
    adversarial: AdversarialMethod = "none"  # train on L∞ adversarial images: fgsm (random start, Wong et al.) | nfgsm (noise 2·eps, unclipped, de Jorge et al.) | pgd
    adversarial_eps: float = 8 / 255  # L∞ radius in pixels of [0, 1] images
    adversarial_alpha: float | None = None  # step size; None: fgsm 1.25·eps (Wong et al.), nfgsm eps, pgd eps/4
    adversarial_steps: int = 10  # pgd: steps per batch (fgsm, nfgsm: always 1)
    adversarial_check: int = 500  # adversarial runs: PGD-10 accuracy on this many held-out images after each epoch (catastrophic overfitting shows there); 0 = off

    @property
    def low_res_epochs(self) -> int:
        """How many of the first epochs train at low_res: a share, so that --epochs scales them."""
        return round(self.low_res_share * self.epochs) if self.low_res else 0

    @property
    def drop_easy_from(self) -> int:
        """The first epoch (from 0) that trains without the easiest images; `epochs` when none does.
        At least one full epoch comes first: the model must have learnt something to judge by."""
        return max(1, self.epochs - round(self.drop_easy_share * self.epochs)) if self.drop_easy else self.epochs


@dataclass
class SemiConfig:
    method: SemiMethod = "none"  # fixmatch | pseudo | selftrain: learn from the unlabelled pool too (needs labels_per_class)
    threshold: float = 0.95  # τ: a pool image teaches only when the model's (selftrain: teacher's) top probability is ≥ τ
    teacher: str | None = None  # selftrain: a finished run (or checkpoint) with the same labels; it labels the pool
    unlabelled_ratio: int = 3  # μ: unlabelled images per labelled image in a step (FixMatch: 7; fewer fit a CPU hour)
    unlabelled_weight: float = 1.0  # λ_u: weight of the unlabelled loss beside the labelled one
    strong_ops: int = 2  # fixmatch's strong view: RandAugment ops per image (after the weak flip + translate)
    strong_magnitude: int = 16  # of 0..30; about the mean of FixMatch's random magnitudes
    strong_cutout: int = 16  # then a square of this side is zeroed (FixMatch: half the image)

    @property
    def online(self) -> bool:
        """Whether each step learns from the pool (fixmatch, pseudo), rather than from labels a
        teacher gave it before training (selftrain: an ordinary supervised run after that)."""
        return self.method in ("fixmatch", "pseudo")


@dataclass
class Config:
    recipe: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    """Block style, but a list of scalars, or a mapping of up to three, on one line: a pruned
    net's `model.resized` takes a line per layer (`blocks.0.conv1: {out_channels: 9}`)."""

    def represent_sequence(self, tag, sequence, flow_style=None):
        return super().represent_sequence(tag, sequence, flow_style=_is_flat(sequence))

    def represent_mapping(self, tag, mapping, flow_style=None):
        return super().represent_mapping(tag, mapping, flow_style=len(mapping) <= 3 and _is_flat(mapping.values()))


def _is_flat(values) -> bool:
    return all(not isinstance(v, (dict, list, tuple)) for v in values)


@dataclass
class QuantizeConfig:
    """What `cifarlab quantize` does to a trained model (not a training setting: the int8
    folder's meta.json keeps it beside the source run's config)."""

    backend: QuantBackend = "onnxruntime"  # which quantizer; the result is ONNX either way (compress/quantize.py)
    calib: int = 1000  # training images (unaugmented) that set the activation ranges
    qat_epochs: int = 0  # quantization-aware training epochs on the training split first; 0 = off
    qat_lr: float = 0.001  # QAT's peak SGD lr (cosine to 0): about 1% of a from-scratch lr, to adapt the weights
    out: str | None = None  # output folder; None = runs/<source>-int8 (or -int8-2, ...)

    def validate(self) -> QuantizeConfig:
        """One CifarlabError naming the flag, as `validate` does for a run's config."""
        _check_choice(self.backend, typing.get_args(QuantBackend), "--backend")
        if self.calib < 1:
            raise CifarlabError(f"--calib={self.calib} is out of range; it must be > 0")
        if self.qat_epochs < 0:
            raise CifarlabError(f"--qat-epochs={self.qat_epochs} is out of range; it must be >= 0")
        if not (math.isfinite(self.qat_lr) and self.qat_lr > 0):
            raise CifarlabError(f"--qat-lr={self.qat_lr} is out of range; it must be a finite number > 0")
        return self


@dataclass
class ActiveConfig:
    """What `cifarlab active` does around its rounds (each round's training is an ordinary run
    config; labels/active.py says how the rounds go)."""

    start: int  # labelled images of round 0, drawn at random with the run's seed
    budget: int  # images labelled per round after round 0
    rounds: int  # rounds after round 0: the last one trains on start + rounds × budget labels
    strategy: ActiveStrategy  # how the budget is picked from the unlabelled pool

    def validate(self, training_images: int | None = None) -> ActiveConfig:
        """One CifarlabError naming the flag; `training_images`: the pool before round 0 (None:
        the checks that need no data, made before the data is read)."""
        _check_choice(self.strategy, typing.get_args(ActiveStrategy), "--strategy")
        for name in ("start", "budget", "rounds"):
            if getattr(self, name) < 1:
                raise CifarlabError(f"--{name}={getattr(self, name)} is out of range; it must be at least 1")
        if training_images is None:
            return self
        if self.start > training_images:
            raise CifarlabError(f"--start={self.start} is more than the {training_images} training images")
        needed = self.start + self.rounds * self.budget
        if needed > training_images:
            raise CifarlabError(
                f"--budget={self.budget} × --rounds={self.rounds} after --start={self.start} needs {needed} images, "
                f"more than the {training_images} training images; lower --budget or --rounds"
            )
        return self


# each chooses the images a run learns labels from (a run takes one of them): a few-label run
FEW_LABEL_KEYS = ("train_subset", "labels_per_class", "labelled_indices")


CIFAR_DATASETS = ("cifar10", "cifar100", "cifar100-coarse")
_NON_NEGATIVE = (
    "data.val_size", "data.calib_size", "augment.translate", "augment.cutout", "augment.mixup_alpha",
    "augment.cutmix_alpha", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.warmup_epochs", "optim.gamma",
    "optim.final_lr_factor", "optim.grad_clip", "train.threads", "train.checkpoint_every", "train.checkpoint_epochs",
    "optim.lookahead_every", "optim.lookahead_start_epoch", "finetune.unfreeze_every", "optim.jsd_weight",
    "semi.unlabelled_weight", "semi.strong_cutout", "train.adversarial_check",
)  # fmt: skip
_POSITIVE = ("data.train_subset", "data.labels_per_class", "data.image_size", "train.epochs", "train.batch_size",
             "train.eval_batch_size", "train.log_every", "finetune.input_size", "augment.randaugment_ops",
             "augment.augmix_width", "augment.augmix_depth", "augment.augmix_alpha", "train.adversarial_alpha",
             "train.adversarial_steps", "semi.unlabelled_ratio", "semi.strong_ops",
             "augment.policy_fraction")  # fmt: skip


def validate(config: Config) -> Config:
    """Check choices and ranges; raise one CifarlabError naming the key and the allowed values."""
    flat = _flatten(config.to_dict())
    for key, value in flat.items():
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise CifarlabError(f"{key}={value}: NaN and infinity are not allowed; give a finite number")
    for key in _CHOICE_KEYS:
        _check_choice(flat[key], choices(key), key)
    for key in _NON_NEGATIVE + _POSITIVE:
        value = flat[key]
        if value is not None and (value < 0 or (key in _POSITIVE and value == 0)):
            raise CifarlabError(f"{key}={value} is out of range; it must be {'> 0' if key in _POSITIVE else '>= 0'}")
    for key, limit in (("optim.label_smoothing", 1.0), ("optim.ema_decay", 1.0), ("optim.momentum", 1.0),
                       ("optim.lookahead_decay", 1.0)):  # fmt: skip
        if not 0 <= flat[key] < limit:
            raise CifarlabError(f"{key}={flat[key]} is out of range; it must be in [0, {limit})")
    for key, low, high in (("augment.random_erasing", 0, 1), ("augment.randaugment_magnitude", 0, 30),
                           ("augment.augmix_severity", 1, 10), ("augment.noise_sigma", 0, 1),
                           ("augment.impulse_amount", 0, 1), ("augment.brightness", 0, 1), ("augment.contrast", 0, 1),
                           ("augment.policy_fraction", 0, 1), ("semi.strong_magnitude", 0, 30)):  # fmt: skip
        if not low <= flat[key] <= high:
            raise CifarlabError(f"{key}={flat[key]} is out of range; it must be in [{low}, {high}]")
    for key in ("data.mean", "data.std"):
        if flat[key] is not None and (len(flat[key]) != 3 or (key == "data.std" and min(flat[key]) <= 0)):
            raise CifarlabError(f"{key} must be three numbers (one per RGB channel){', all > 0' * (key == 'data.std')}")
    if not 0 < flat["train.adversarial_eps"] <= 1:
        raise CifarlabError(f"train.adversarial_eps={flat['train.adversarial_eps']} is out of range; it must be > 0 "
                            f"and at most 1 (pixel range [0, 1]; 8/255 = 0.0314)")  # fmt: skip
    _validate_semi(config)
    _validate_jsd(config)
    _validate_distill(config)
    _validate_low_res(config)
    _validate_drop_easy(config)
    for key in ("finetune.layer_decay", "train.tta_share"):
        if not 0 < flat[key] <= 1:
            raise CifarlabError(f"{key}={flat[key]} is out of range; it must be in (0, 1]")
    _validate_dataset(config.data)
    check_model_name(config.model.name)
    if config.train.device not in ("auto", "cpu", "cuda") and not config.train.device.startswith("cuda:"):
        raise CifarlabError(f"train.device={config.train.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
    return config


def _validate_low_res(config: Config) -> None:
    """Shrunk early epochs need a side below the images' and a model that takes any input size;
    semi-supervised steps forward labelled and unlabelled images together, so they keep full size."""
    t = config.train
    if not t.low_res:
        return
    side = config.data.image_size
    if not 8 <= t.low_res < side:
        raise CifarlabError(f"train.low_res={t.low_res} is out of range; it must be 0 (off) or in [8, {side}) pixels")
    if not 0 < t.low_res_share < 1:
        raise CifarlabError(f"train.low_res_share={t.low_res_share} is out of range; with train.low_res it must be "
                            f"in (0, 1): the last epochs train at the full size the test uses")  # fmt: skip
    if config.semi.online:
        raise CifarlabError("train.low_res is not used with semi-supervised training; set train.low_res=0")


def _validate_drop_easy(config: Config) -> None:
    """Dropping needs a share of images to keep and of epochs to keep them in; a semi-supervised
    epoch is a pass over the unlabelled pool, which has no labels to judge ease by."""
    t = config.train
    if not 0 <= t.drop_easy < 1:
        raise CifarlabError(f"train.drop_easy={t.drop_easy} is out of range; it must be in [0, 1) (0: off)")
    if not t.drop_easy:
        return
    if not 0 < t.drop_easy_share < 1:
        raise CifarlabError(f"train.drop_easy_share={t.drop_easy_share} is out of range; with train.drop_easy it must "
                            f"be in (0, 1): the first epochs train on every image")  # fmt: skip
    if config.semi.online:
        raise CifarlabError("train.drop_easy is not used with semi-supervised training; set train.drop_easy=0")


def _validate_jsd(config: Config) -> None:
    """The consistency loss compares a clean view with two AugMix views of the same images,
    so it needs the AugMix policy and no partner images or adversarial images replacing them."""
    if not config.optim.jsd_weight:
        return
    a = config.augment
    if a.policy != "augmix":
        raise CifarlabError(f"optim.jsd_weight={config.optim.jsd_weight} needs augment.policy=augmix (its views "
                            f"are AugMix views); set augment.policy=augmix or optim.jsd_weight=0")  # fmt: skip
    if a.mixup_alpha or a.cutmix_alpha:
        raise CifarlabError("optim.jsd_weight is not used with Mixup or CutMix (the views must be of the same image); "
                            "set augment.mixup_alpha=0 and augment.cutmix_alpha=0, or optim.jsd_weight=0")  # fmt: skip
    if config.train.adversarial != "none":
        raise CifarlabError(f"choose one of optim.jsd_weight and train.adversarial={config.train.adversarial}, "
                            f"not both")  # fmt: skip


def _validate_distill(config: Config) -> None:
    """A weight is a share of the loss; a semi-supervised step computes its own loss (labels/semi.py)."""
    o = config.optim
    if not 0 < o.distill_weight <= 1:
        raise CifarlabError(f"optim.distill_weight={o.distill_weight} is out of range; it must be in (0, 1]")
    if not o.distill_temperature > 0:
        raise CifarlabError(f"optim.distill_temperature={o.distill_temperature} is out of range; it must be > 0")
    if o.distill_from and config.semi.online:
        raise CifarlabError(f"choose one of semi.method={config.semi.method} and optim.distill_from, not both")


def choices(key: str) -> tuple[str, ...]:
    """The allowed values of a choice setting, e.g. choices("train.tta"), from its Literal type."""
    section, name = key.split(".")
    return typing.get_args(typing.get_type_hints(typing.get_type_hints(Config)[section])[name])


_CHOICE_KEYS = [
    f"{section}.{name}"
    for section, cls in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(cls)
    for name, annotation in typing.get_type_hints(cls).items() if typing.get_origin(annotation) is Literal
]  # fmt: skip


def _check_choice(value, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise CifarlabError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _validate_dataset(data: DataConfig) -> None:
    """The dataset's form (class names and folders are checked when the data is read)."""
    name, colon, rest = data.dataset.partition(":")
    if name == "folder" and not rest:
        raise CifarlabError("data.dataset=folder:PATH needs a path, e.g. folder:~/photos")
    if name != "folder":
        if name not in CIFAR_DATASETS:
            raise CifarlabError(
                f"data.dataset={data.dataset!r} is not allowed; choose one of: {', '.join(CIFAR_DATASETS)}, "
                f"a class subset such as cifar10:cat,dog, or folder:PATH"
            )
        if colon and len(set(filter(None, rest.split(",")))) < 2:
            raise CifarlabError(f"data.dataset={data.dataset!r}: a class subset needs two or more comma-separated names")
        if data.image_size != 32:
            raise CifarlabError(f"data.image_size={data.image_size}: CIFAR images are 32×32; it is for folder: datasets")
    chosen = data.few_labels
    if len(chosen) > 1:
        raise CifarlabError(f"choose one of data.{' and data.'.join(chosen)}, not {'both' if len(chosen) == 2 else 'all'}")


def _validate_semi(config: Config) -> None:
    """The semi-supervised step runs its own forward passes on the labelled batch and the
    unlabelled views: it has no AugMix views to compare and crafts no adversarial images."""
    semi = config.semi
    if not 0 < semi.threshold <= 1:
        raise CifarlabError(f"semi.threshold={semi.threshold} is out of range; it must be in (0, 1]")
    if semi.teacher is not None and semi.method != "selftrain":
        raise CifarlabError(f"semi.teacher is used by semi.method=selftrain only, not {semi.method}")
    if semi.method == "none":
        return
    if config.data.labels_per_class is None:
        raise CifarlabError(
            f"semi.method={semi.method} needs data.labels_per_class (--labels-per-class N): N labelled images per "
            f"class, the rest of the training set is the unlabelled pool"
        )
    if semi.method == "selftrain":
        if semi.teacher is None:
            raise CifarlabError("semi.method=selftrain needs semi.teacher (--teacher RUN): a finished run that learnt "
                                "from the same labels, whose confident predictions label the pool")  # fmt: skip
        return
    if config.optim.jsd_weight:
        raise CifarlabError(f"choose one of semi.method={semi.method} and optim.jsd_weight={config.optim.jsd_weight}, "
                            f"not both")  # fmt: skip
    if config.train.adversarial != "none":
        raise CifarlabError(f"choose one of semi.method={semi.method} and train.adversarial={config.train.adversarial}, "
                            f"not both")  # fmt: skip
    # Label smoothing ε trains the top probability toward 1 - ε(K-1)/K, at most 1 - ε/2 (K = 2 classes):
    # below τ, no weak view would pass the threshold and the unlabelled images would teach nothing.
    if 1 - config.optim.label_smoothing / 2 < semi.threshold:
        raise CifarlabError(
            f"optim.label_smoothing={config.optim.label_smoothing} keeps the model's confidence under "
            f"semi.threshold={semi.threshold}, so no pseudo-label would pass; use --recipe {SEMI_RECIPE}, "
            f"or set optim.label_smoothing=0 or a lower semi.threshold"
        )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key not in ("options", "groups", "resized"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _coerce(value, annotation, key: str):
    """Check a YAML/CLI value against a field's type (ints pass as floats, never the reverse)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        _check_choice(value, typing.get_args(annotation), key)
        return value
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise CifarlabError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is dict and isinstance(value, dict):
        return value
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    raise CifarlabError(f"{key} must be of type {getattr(annotation, '__name__', annotation)}, got {value!r}")


def merge(config: Config, overrides: dict, source: str) -> Config:
    """Return `config` with nested `overrides` applied; unknown keys are errors naming `source`."""
    if not isinstance(overrides, dict):
        raise CifarlabError(f"{source}: expected a mapping of sections, got {type(overrides).__name__}")
    config = dataclasses.replace(config)
    hints = typing.get_type_hints(Config)
    for section, values in overrides.items():
        if section == "recipe":
            config.recipe = values
            continue
        if section not in hints:
            raise CifarlabError(f"{source}: unknown section '{section}'; sections are: {', '.join(hints)}")
        if not isinstance(values, dict):
            raise CifarlabError(f"{source}: section '{section}' must be a mapping")
        current = getattr(config, section)
        field_types = typing.get_type_hints(type(current))
        updates = {}
        for key, value in values.items():
            if key not in field_types:
                raise CifarlabError(
                    f"{source}: unknown key '{section}.{key}'; keys are: {', '.join(field_types)}"
                )
            if field_types[key] is dict and isinstance(value, dict):
                value = _merged(getattr(current, key), value)
            updates[key] = _coerce(value, field_types[key], f"{section}.{key}")
        setattr(config, section, dataclasses.replace(current, **updates))
    return config


def parse_assignment(text: str) -> dict:
    """'optim.lr=0.05' → {'optim': {'lr': 0.05}}; deeper keys reach into mapping settings:
    'model.options.widths=[32, 64, 64]'. The value is read as YAML (numbers, bools, lists)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise CifarlabError(f"--set expects section.key=value (e.g. optim.lr=0.05), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise CifarlabError(f"--set {text!r}: cannot read the value ({e})") from None
    for part in reversed(parts):
        value = {part: value}
    return value


def _merged(old: dict, new: dict) -> dict:
    """Mappings merge key by key (recursively); anything else is replaced."""
    out = dict(old)
    for key, value in new.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    text = read_text(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}: {getattr(e, 'problem', '')})" if mark else ""
        raise CifarlabError(f"{what} '{path}' is not valid YAML{where}") from None
    return data or {}


def list_recipes() -> dict[str, str]:
    """Recipe name → its description (the leading comment block of its YAML file)."""
    recipes = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        lines = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("# ").rstrip())
        recipes[path.stem] = " ".join(line for line in lines if line)
    return recipes


DEVICE_TYPES = ("cpu", "cuda")
# A recipe's sections named after a device type or a fine-tuning strategy apply when the run
# trains on that device or with that strategy (fast: bf16 + compile on CUDA; a linear probe's lr).
SITUATIONS = DEVICE_TYPES + typing.get_args(Strategy)
GENERAL_RECIPE = "standard"  # for a model whose family has no recipe of its own


def _recipe_file(name: str) -> dict:
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise CifarlabError(f"unknown recipe '{name}'; `cifarlab recipes` lists: {', '.join(list_recipes())}")
    return read_yaml(path)


def _recipe_layers(name: str) -> list[tuple[dict, str]]:
    """A recipe's settings as layers, those of the recipe it starts from (`base:`) first."""
    data = _recipe_file(name)
    base = data.pop("base", None)
    data.pop("suits", None)
    return (_recipe_layers(base) if base else []) + [(data, f"recipe '{name}'")]


def recipe_for_model(model: str) -> str:
    """The recipe that trains `model` as the literature does: the one that lists it under
    `suits:` (its family's), else the general recipe for conventional nets."""
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        if model in read_yaml(path).get("suits", []):
            return path.stem
    return GENERAL_RECIPE


def _keys(layer: dict) -> set[tuple[str, str]]:
    return {(section, key) for section, values in layer.items() if isinstance(values, dict) for key in values}


def _build(recipe_layers: list[tuple[dict, str]], user_layers: list[tuple[dict, str]], start: Config,
           device: str | None = None) -> Config:  # fmt: skip
    """Merge every layer once, in order; then each recipe layer's sections for the device and
    fine-tuning strategy now known, on the keys that no later layer sets (later still wins)."""
    config = start
    for data, source in recipe_layers:
        config = merge(config, {k: v for k, v in data.items() if k not in SITUATIONS}, source)
    recipe_model = config.model.name
    for overrides, source in user_layers:
        config = merge(config, overrides, source)
    situations = {device or device_type(config.train.device), config.finetune.strategy}
    layers = recipe_layers + user_layers
    for i, (data, source) in enumerate(recipe_layers):
        later = set().union(*(_keys(layer) for layer, _ in layers[i + 1 :]))
        for situation in situations & data.keys():
            section = {s: {k: v for k, v in values.items() if (s, k) not in later}
                       for s, values in data[situation].items()}  # fmt: skip
            config = merge(config, section, f"{source} ({situation} section)")
    return _fit_model_options(config, recipe_model, user_layers)


def _fit_model_options(config: Config, recipe_model: str, user_layers: list[tuple[dict, str]]) -> Config:
    """Options the recipe gives its own model that another model does not take are dropped with
    a note; options the user gave that the model does not take are refused."""
    accepted = model_options(config.model.name)
    if accepted is None:
        return config
    given = {key for layer, _ in user_layers for key in (layer.get("model") or {}).get("options") or {}}
    for key in sorted(set(config.model.options) - accepted):
        if key in given or config.model.name == recipe_model:
            raise CifarlabError(
                f"model.options.{key} is not an option of {config.model.name}; "
                f"it takes: {', '.join(sorted(accepted)) or 'none'}"
            )
    dropped = sorted(set(config.model.options) - accepted)
    if dropped:
        print(f"note: {config.model.name} does not take the options recipe '{config.recipe}' gives {recipe_model} "
              f"({', '.join(dropped)}); they are left out", file=sys.stderr)  # fmt: skip
        options = {k: v for k, v in config.model.options.items() if k in accepted}
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, options=options))
    return config


def load_recipe(name: str, device_type: str | None = None) -> Config:
    """A named recipe as it trains on `device_type` (its `cpu:` / `cuda:` section applied)."""
    config = _build(_recipe_layers(name), [], Config(), device_type)
    config.recipe = name
    return config


def device_type(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def resolve(
    recipe: str | None = None, config_file: str | None = None, flags: dict | None = None, sets: list[str] = (),
    base: Config | None = None,
) -> Config:  # fmt: skip
    """Build the run's config: a recipe (its sections for the device and strategy included),
    then a YAML file, then CLI flags, then --set lines.

    The recipe is `recipe`, else the file's `recipe:` (a run's saved config.yaml names its
    own), else the recipe for the model the layers name, else the semi-supervised recipe when
    they ask for semi.method, else the default. With `base` (the saved config of a run being
    resumed) the layers apply to it instead of a recipe."""
    layers = [(read_yaml(config_file), str(config_file))] if config_file else []
    layers += [(flags, "command line")] if flags else []
    layers += [(parse_assignment(a), "--set") for a in sets]
    if base is not None:
        return validate(_build([], layers, base))
    asked = [layer for layer, _ in layers if isinstance(layer, dict)]
    model, semi = _last_asked(asked, "model", "name"), _last_asked(asked, "semi", "method")
    name = recipe or next((layer["recipe"] for layer in reversed(asked) if layer.get("recipe")), None)
    name = name or (recipe_for_model(model) if model else SEMI_RECIPE if semi not in (None, "none") else DEFAULT_RECIPE)
    config = _build(_recipe_layers(name), layers, dataclasses.replace(Config(), recipe=name))
    config.recipe = name
    return validate(config)


def _last_asked(layers: list[dict], section: str, key: str):
    """The value of section.key in the last layer that sets it, else None."""
    return next((v[key] for layer in reversed(layers) if isinstance(v := layer.get(section), dict) and key in v), None)


def from_dict(d: dict) -> Config:
    """Rebuild a saved config (config.yaml of a run, meta.json of a checkpoint)."""
    return validate(merge(Config(), d, "saved config"))
