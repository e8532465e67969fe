"""The typed training config: the single source of truth for a run.

A run is fully described by a `TrainConfig`. Presets (hetgan/presets.py) build one, `--set
section.field=value` overrides fields with type checking, and the resolved config is written into
the run directory, every checkpoint and the generator artifact, so loading never depends on CLI
defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hetgan.errors import ConfigError

MIN_EVAL_N = 10  # fewest samples a metric is computed from (the k-NN metrics need more than k)


@dataclass
class ModelConfig:
    arch: str = "dcgan"  # registry name: see `hetgan.models.MODELS`
    z_dim: int = 100
    width: int = 64  # base channel count (conv nets) or first hidden width (mlp)
    g_depth: int = 0  # mlp only: G with this many hidden layers of `width` units; 0 = widths w, 2w, 4w
    d_depth: int = 0  # mlp only: D with this many hidden layers, 2w then w each; 0 = 2 (widths 2w, w)
    # G's hidden widths layer by layer, [] = the family's own from `width` (`hetgan compress` writes
    # them for a pruned student): dcgan, each upsampling layer's channels; mlp and maxout, each
    # hidden layer's units; resnet, [residual stream, inner channels of each of the 3 blocks].
    g_widths: list[int] = field(default_factory=list)
    # Class-conditional G and D (G(z, y), a projection D): labels come from the data (class
    # folders, MNIST, CIFAR-10, npz `labels`); n_classes 0 = the data's count, set when a run starts.
    conditional: bool = False
    n_classes: int = 0


@dataclass
class LossConfig:
    name: str = "bce"  # registry name: see `hetgan.losses.LOSSES`
    n_critic: int = 1  # D steps per G step
    gp_lambda: float = 10.0  # WGAN-GP penalty weight (Gulrajani et al. 2017)
    r1_gamma: float = 0.0  # R1 penalty weight on real data, 0 = off (Mescheder et al. 2018)
    pack: int = 1  # PacGAN packing: D judges `pack` samples at once (Lin et al. 2018)
    augment: str = ""  # DiffAugment policy for everything D sees: "", "translation", "translation,cutout"
    # Adaptive discriminator augmentation (Karras et al. 2020): the r_t = E[sign D(real)] that p
    # steers toward, 0 = off (0.6 is the paper's); p moves by at most 1 per `ada_kimg` kimg,
    # adjusted every `ada_interval` D phases.
    ada_target: float = 0.0
    ada_kimg: float = 100.0
    ada_interval: int = 4


@dataclass
class OptimConfig:
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # Decay of both learning rates: "none", or "linear"/"cosine" from decay_start_kimg to
    # decay_end_kimg down to lr_final_scale times the rates above, held there afterwards.
    lr_decay: str = "none"
    decay_start_kimg: float = 0.0
    decay_end_kimg: float = 0.0
    lr_final_scale: float = 0.0


@dataclass
class DataConfig:
    spec: str = "mnist5k"  # see `hetgan.data.describe_specs()`
    resolution: int = 32  # images are centre-cropped and resized to this square size
    channels: int = 1  # 1 = grayscale, 3 = RGB
    on_bad_image: str = "error"  # error | skip
    # auto | resident (uint8 on the device) | prefetch (CPU thread, pinned, async copy) | stream (as
    # prefetch, and folder:DIR images are decoded as training reaches them, not when the run starts)
    loader: str = "auto"
    resident_max_mb: int = 2048  # with loader=auto, larger datasets are prefetched instead
    cache_mb: int = 2048  # with loader=stream, decoded images kept in memory (the first files in file order)
    # The name of each class index (a conditional run writes its data's here, so they travel with
    # every checkpoint and artifact: `hetgan sample --class NAME`); [] = the data's own names.
    class_names: list[str] = field(default_factory=list)
    # A self-conditioned GAN (Liu et al. 2020; hetgan.data.clusters): label the data by k-means
    # clusters and train a conditional G and D on them, on any unlabelled data; 0 = off. The model is
    # then conditional on the clusters (model.conditional and n_classes are set when the run starts).
    clusters: int = 0
    # Each class's share of the data, written when a self-conditioned run starts: G draws its
    # unlabelled samples over them; [] = every class in turn.
    class_weights: list[float] = field(default_factory=list)


@dataclass
class LoopConfig:
    kimg: float = 100.0  # length of training in thousands of real images shown to D
    batch_size: int = 64
    ema_kimg: float = 10.0  # half-life of G_ema in kimg (Karras et al. 2020)
    ema_rampup: float = 0.05  # half-life is at most this fraction of images seen so far
    snapshot_kimg: float = 25.0  # checkpoint interval
    grid_kimg: float = 10.0  # sample-grid interval
    keep_checkpoints: int = 3  # at least 2, so a corrupt newest one can fall back
    log_interval: int = 20  # steps between metrics.jsonl lines
    max_nonfinite_steps: int = 8  # consecutive non-finite steps before the run stops
    grid_size: int = 64  # samples in each grid
    eval_kimg: float = 0.0  # metrics interval during training (--eval-every), 0 = off
    eval_n: int = 2000  # samples per evaluation during training
    evalnet: str = ""  # feature network file for FID; "" = the bundled digits net where it applies
    tensorboard: bool = False  # also log scalars, grids and evals for TensorBoard (RUN_DIR/tensorboard)


@dataclass
class AccelConfig:
    device: str = "auto"  # auto | cpu | cuda[:i] | mps | xpu
    g_device: str = ""  # G (and G_ema) on another device than `device`; "" = `device`
    d_device: str = ""  # D on another device than `device`; "" = `device`
    g_stages: str = ""  # split G's layers over devices, e.g. "0-8@cuda,9-@cpu" (see placement.py)
    d_stages: str = ""  # split D's layers over devices
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    channels_last: bool = False
    compile: bool = False  # torch.compile G and D (D stays eager under R1 / WGAN-GP)
    cuda_graphs: bool = False  # the whole step captured as one CUDA graph (one GPU, fused Adam, not fp16)
    tf32: bool = False  # TF32 matmuls and convolutions on Ampere+ GPUs
    cudnn_benchmark: bool = False
    optimizer_impl: str = "default"  # default | foreach | fused
    threads: int = 0  # CPU threads for torch, 0 = torch's default
    # D's phase judges the real and the fake batch in two forwards (separate) or in one over both
    # (joint); joint needs a D whose output for a sample depends on nothing else in its forward
    # (no BatchNorm, no spectral norm): see `hetgan.models.layers.batch_coupled`.
    batch_layout: str = "separate"
    # Data-parallel runs on GPUs (NCCL): BatchNorm normalises by the statistics of the global batch
    # (torch's SyncBatchNorm) instead of each rank's slice; gloo cannot (SyncBatchNorm needs CUDA).
    sync_batchnorm: bool = False


@dataclass
class DistillConfig:
    """A student G trained to match a teacher's G_ema on the same z (`hetgan compress`)."""

    teacher: str = ""  # the teacher's run directory; "" = an ordinary run
    init: str = ""  # the student's starting G (a pruned teacher, safetensors); "" = from scratch
    pixel_weight: float = 10.0  # L1 between the student's and the teacher's images
    feature_weight: float = 1.0  # squared distance of their features in the data's feature network
    adversarial_weight: float = 1.0  # G's GAN loss against D, fine-tuned from the teacher run's; 0 = no D


@dataclass
class TrainConfig:
    preset: str = "dcgan_mnist"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> TrainConfig:
        """Check value ranges that types alone cannot express; returns self."""
        checks = self._model_and_optimiser_checks() + self._data_and_loop_checks()
        checks += self._conditional_and_ada_checks()
        bad = [self._with_values(msg) for ok, msg in checks if not ok]
        if self.train.batch_size % self.loss.pack:
            bad.append(f"train.batch_size ({self.train.batch_size}) must be a multiple of loss.pack ({self.loss.pack})")
        if bad:
            raise ConfigError("invalid config: " + "; ".join(bad))
        return self

    def _model_and_optimiser_checks(self) -> list[tuple[bool, str]]:
        """(holds, message) for the model, its loss, distillation and the optimiser."""
        return [
            (self.model.z_dim > 0, "model.z_dim must be > 0"),
            (self.model.width > 0, "model.width must be > 0"),
            (self.model.g_depth >= 0, "model.g_depth must be >= 0 (0 = the family's own layout)"),
            (self.model.d_depth >= 0, "model.d_depth must be >= 0 (0 = the family's own layout)"),
            (
                self.model.g_depth == self.model.d_depth == 0 or self.model.arch == "mlp",
                f"model.g_depth and model.d_depth apply to the mlp family only, not {self.model.arch!r}; "
                "set them to 0 (--set model.g_depth=0 --set model.d_depth=0)",
            ),
            (all(w > 0 for w in self.model.g_widths), "model.g_widths must all be > 0"),
            (self.loss.n_critic >= 1, "loss.n_critic must be >= 1"),
            (
                min(self.distill.pixel_weight, self.distill.feature_weight, self.distill.adversarial_weight) >= 0,
                "distill.pixel_weight, distill.feature_weight and distill.adversarial_weight must be >= 0",
            ),
            (self.loss.pack >= 1, "loss.pack must be >= 1"),
            (self.loss.r1_gamma >= 0, "loss.r1_gamma must be >= 0"),
            (self.optim.g_lr > 0 and self.optim.d_lr > 0, "optim.g_lr and optim.d_lr must be > 0"),
            (self.optim.lr_decay in ("none", "linear", "cosine"), "optim.lr_decay must be none, linear or cosine"),
            (
                self.optim.lr_decay == "none" or 0 <= self.optim.decay_start_kimg < self.optim.decay_end_kimg,
                "optim.decay_end_kimg must be > optim.decay_start_kimg >= 0 when optim.lr_decay is on",
            ),
            (0 <= self.optim.lr_final_scale <= 1, "optim.lr_final_scale must be in [0, 1]"),
        ]

    def _data_and_loop_checks(self) -> list[tuple[bool, str]]:
        """(holds, message) for the data, the training loop and acceleration."""
        return [
            (self.data.channels in (1, 3), "data.channels must be 1 or 3"),
            (self.data.resolution >= 4, "data.resolution must be >= 4"),
            (self.data.on_bad_image in ("error", "skip"), "data.on_bad_image must be error or skip"),
            (
                self.data.loader in ("auto", "resident", "prefetch", "stream"),
                "data.loader must be auto, resident, prefetch or stream",
            ),
            (
                self.data.loader != "stream" or self.data.spec.startswith("folder:"),
                f"data.loader=stream decodes image files as training reaches them, so it needs a folder:DIR "
                f"dataset, not {self.data.spec!r}; use data.loader=prefetch for the others",
            ),
            (self.train.kimg > 0, "train.kimg must be > 0"),
            (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.train.keep_checkpoints >= 2, "train.keep_checkpoints must be >= 2"),
            (self.train.snapshot_kimg > 0, "train.snapshot_kimg must be > 0"),
            (self.train.grid_kimg > 0, "train.grid_kimg must be > 0"),
            (self.train.log_interval >= 1, "train.log_interval must be >= 1"),
            (self.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1"),
            (self.data.cache_mb >= 0, "data.cache_mb must be >= 0 (0 = no cache)"),
            (self.data.clusters >= 0, "data.clusters must be >= 0 (0 = off)"),
            (all(w >= 0 for w in self.data.class_weights), "data.class_weights must all be >= 0"),
            (self.accel.threads >= 0, "accel.threads must be >= 0"),
            (self.accel.precision in ("fp32", "bf16", "fp16"), "accel.precision must be fp32, bf16 or fp16"),
            (
                self.accel.optimizer_impl in ("default", "foreach", "fused"),
                "accel.optimizer_impl must be default, foreach or fused",
            ),
            (self.accel.batch_layout in ("separate", "joint"), "accel.batch_layout must be separate or joint"),
            (self.train.eval_kimg >= 0, "train.eval_kimg must be >= 0 (0 = off)"),
            (self.train.eval_n >= MIN_EVAL_N, f"train.eval_n must be >= {MIN_EVAL_N}"),
        ]

    def _conditional_and_ada_checks(self) -> list[tuple[bool, str]]:
        """(holds, message) for class-conditional models and ADA, and what they cannot be combined with."""
        conditional = self.model.conditional or self.data.clusters > 0
        return [
            (self.model.n_classes >= 0, "model.n_classes must be >= 0 (0 = the data's number of classes)"),
            (
                self.model.conditional or self.model.n_classes == 0,
                "model.n_classes applies to conditional models only; set --set model.conditional=true "
                "or model.n_classes=0",
            ),
            (
                not conditional or self.loss.pack == 1,
                "loss.pack must be 1 with model.conditional=true or data.clusters (a pack would mix "
                "classes in one judgement)",
            ),
            (
                not conditional or not (self.accel.g_stages or self.accel.d_stages),
                "accel.g_stages and accel.d_stages do not split a conditional network (its labels go "
                "to inner layers); leave them empty with model.conditional=true or data.clusters",
            ),
            (
                not conditional or not self.accel.cuda_graphs,
                "accel.cuda_graphs does not capture a conditional step; drop it with "
                "model.conditional=true or data.clusters",
            ),
            (0 <= self.loss.ada_target < 1, "loss.ada_target must be in [0, 1) (0 = ADA off; 0.6 is the paper's)"),
            (self.loss.ada_kimg > 0, "loss.ada_kimg must be > 0"),
            (self.loss.ada_interval >= 1, "loss.ada_interval must be >= 1"),
            (
                not (self.loss.ada_target and self.accel.cuda_graphs),
                "accel.cuda_graphs would freeze ADA's p into the captured step; drop one of them",
            ),
            (
                not (self.distill.teacher and self.accel.cuda_graphs),
                "accel.cuda_graphs does not capture a distillation step; drop it for hetgan compress",
            ),
        ]

    def _with_values(self, msg: str) -> str:
        """A range message with the values it was given: "accel.threads must be >= 0" becomes
        "accel.threads must be >= 0 (got -1)". Messages that are not "X must ..." already say them."""
        if " must " not in msg:
            return msg
        names = list(dict.fromkeys(_FIELD_NAME.findall(msg)))
        values = [getattr(getattr(self, section), name) for section, name in (n.split(".") for n in names)]
        if len(names) == 1:
            return f"{msg} (got {values[0]!r})"
        return f"{msg} (got " + ", ".join(f"{n}={v!r}" for n, v in zip(names, values, strict=True)) + ")"


_FIELD_NAME = re.compile(r"\b(?:model|loss|optim|data|train|accel|distill)\.[a-z_0-9]+")

# Fields that may differ between a checkpoint and the config resuming it: they change how long
# the run goes on and how it reports, never the state a step computes.
RESUMABLE_FIELDS = frozenset(
    {
        "train.kimg",
        "train.snapshot_kimg",
        "train.grid_kimg",
        "train.keep_checkpoints",
        "train.log_interval",
        "train.max_nonfinite_steps",
        "train.grid_size",
        "train.eval_kimg",
        "train.eval_n",
        "train.evalnet",
        "data.loader",
        "data.resident_max_mb",
        "data.cache_mb",
    }
)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(raw: dict[str, Any], where: str = "config", lines: dict[str, int] | None = None) -> TrainConfig:
    """Build a config from plain data (a YAML/JSON file), rejecting unknown or mistyped fields.
    `lines` maps a field's dotted name to its line in the file, for the error to name."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
    lines = lines or {}
    cfg = TrainConfig()
    for key, value in raw.items():
        items = (
            {f"{key}.{sub_key}": sub_value for sub_key, sub_value in value.items()}
            if isinstance(value, dict)
            else {key: value}
        )
        for name, item in items.items():
            set_field(cfg, name, item, f"{where}, line {lines[name]}" if name in lines else where)
    return cfg.validate()


def load_yaml(path) -> TrainConfig:
    """A config from a YAML file (safe_load: plain data only, nothing is constructed or run)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return from_dict(raw, where=str(path), lines=key_lines(text))


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line of each key of a YAML mapping, and of each key in its sub-mappings, by
    dotted name: `{"train": 3, "train.kimg": 4}`."""
    lines: dict[str, int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        lines[str(key.value)] = key.start_mark.line + 1
        for sub_key, _ in value.value if isinstance(value, yaml.MappingNode) else []:
            lines[f"{key.value}.{sub_key.value}"] = sub_key.start_mark.line + 1
    return lines


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_names(cfg: TrainConfig | None = None) -> list[str]:
    """All settable dotted field names, e.g. `train.batch_size`."""
    cfg = cfg or TrainConfig()
    names = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            names += [f"{f.name}.{sub.name}" for sub in dataclasses.fields(value)]
        else:
            names.append(f.name)
    return names


def did_you_mean(name: str, valid: list[str]) -> str:
    """'; did you mean train.batch_size?' for the closest valid name, else the whole list."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if not close:  # a field's own name without its section: `batch_size` for train.batch_size
        close = [v for v in valid if v.rsplit(".", 1)[-1] == name][:1]
    if close:
        return f"; did you mean {close[0]}? (all fields: hetgan train --help)"
    return f"; valid fields: {', '.join(valid)}"


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `section.field=value` strings; values are parsed as YAML scalars and type-checked."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set train.batch_size=128")
        name, text = item.split("=", 1)
        target, leaf, expected = _field(cfg, name.strip(), "--set")
        if expected is str:  # as typed: "true" or "1e3" is a string here, not a bool or a float
            value = text.strip()
        else:
            try:
                value = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError:
                value = text
        setattr(target, leaf, _coerce(value, expected, name.strip(), "--set"))
    return cfg.validate()


def set_field(cfg: TrainConfig, name: str, value: Any, where: str) -> None:
    target, leaf, expected = _field(cfg, name, where)
    setattr(target, leaf, _coerce(value, expected, name, where))


def _field(cfg: TrainConfig, name: str, where: str) -> tuple[Any, str, type]:
    """(the section holding field `name`, the field's name in it, its type)."""
    parts = name.split(".")
    target: Any = cfg
    for part in parts[:-1]:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            break
    leaf = parts[-1]
    if not dataclasses.is_dataclass(target) or leaf not in {f.name for f in dataclasses.fields(target)}:
        raise ConfigError(f"{where}: unknown config field {name!r}{did_you_mean(name, field_names())}")
    expected = typing.get_type_hints(type(target))[leaf]
    if dataclasses.is_dataclass(expected):
        raise ConfigError(f"{where}: {name!r} is a section; set one of its fields, e.g. {name}.X=V")
    return target, leaf, expected


def _coerce(value: Any, expected: type, name: str, where: str) -> Any:
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if typing.get_origin(expected) is list:  # list[int]: a list of whole numbers
        (item_type,) = typing.get_args(expected)
        if isinstance(value, list) and all(isinstance(v, item_type) and not isinstance(v, bool) for v in value):
            return list(value)
        raise ConfigError(f"{where}: {name} expects a list of {item_type.__name__}s, e.g. [64, 32], got {value!r}")
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: {name} expects {expected.__name__}, got {value!r} ({type(value).__name__})")
