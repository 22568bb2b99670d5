"""Every setting defined once: one typed section per TOML table of ``prunelab run``, with its
type, default, range and description.  The CLI flags (:func:`prunelab.cli.common.section_flags`),
the pipeline's tables, the keyword defaults of the object API (:func:`prunelab.core.search`,
:func:`prunelab.core.finetune`) and the engine's configs (:class:`prunelab.searches.SearchConfig`,
:class:`prunelab.train.TrainConfig`) all read them from here.

    >>> check_section("finetune", {"kd_weight": 0.3}).kd_weight
    0.3
    >>> default("search", "recal_batches"), default("train", "lr")
    (6, 0.1)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import PrunelabError

class _Section(BaseModel):
    """One TOML table: unknown keys, wrong types and out-of-range numbers (inf and nan included)
    are refused by the model itself (pydantic), before any work."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


class RunSection(_Section):
    out: str | None = Field(None, description="run folder (--out overrides it)")
    seed: int = Field(0, description="seed of the search and the fine-tune")
    workers: Count = Field(0, description="Ray workers evaluating search candidates (0: this "
                           "process; needs prunelab[ray])")
    ray_address: str | None = Field(None, description="join this Ray cluster (auto, "
                                    "ray://host:10001) instead of starting a local one")


class ModelSection(_Section):
    ref: str = Field("", description="shipped model name, model folder or path/file.py:fn")
    dataset: str | None = Field(None, description="data set (default: the model's own)")
    data_dir: str | None = Field(None, description="folder with the data set's files")
    factory: str | None = Field(None, description="path/file.py:fn: trust this code to open a "
                                "model folder built with it")
    weights: str | None = Field(None, description="with ref = path/file.py:fn: its weights "
                                "(safetensors / .pt)")


class SearchSection(_Section):
    method: str = Field("", description="search method (prunelab search --help)")
    criterion: str | None = Field(None, description="filter criterion (default: the method's)")
    budget: str = Field("macs=0.5", description="latency=3.2ms | speedup=2 | macs=0.5 | "
                        "params=0.3")
    recal_batches: Count = Field(6, description="BN re-estimation batches per candidate")
    val_images: Count = Field(1000, description="validation images per candidate (0: all)")
    measure_front: Positive = Field(12, description="front points measured on the target")
    score_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="precision of each candidate's BN re-estimate and validation: auto "
        "= bf16 where the CPU runs it natively (AVX-512 BF16, AMX), else fp32")
    fidelity: str = Field("kd:20", description="how the measured points that meet the budget "
                          "are scored for the choice: kd:N (N distillation steps from the "
                          "unpruned model first; the fidelity study ranks with kd:20 about as "
                          "the fine-tuned result does) or bn (BN re-estimate + validation "
                          "top-1, as every candidate)")
    decision_processes: Annotated[int, Field(ge=0, le=64)] = Field(
        6, description="fresh processes that decide a landed speed-up (paired, one sample each; "
        "0: paired sessions in the search process)")
    options: dict[str, Any] = Field(default_factory=dict, description="method options")


class TargetSection(_Section):
    name: str = Field("torch-cpu", description="latency target (prunelab targets)")
    batch_size: Positive = Field(1, description="batch the latency is measured with")
    threads: Positive = Field(1, description="target threads")
    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="fp32, or int8 on onnxruntime-cpu / openvino-cpu (static QDQ)")
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="int8 calibration method")
    calib_images: Positive = Field(256, description="int8 calibration images (training split)")
    int8_types: Literal["auto", "s8s8", "u8s8", "u8u8"] = Field(
        "auto", description="int8 activation/weight types (auto: chosen per CPU)")
    int8_layers: Literal["all", "fast"] = Field(
        "all", description="int8 layers: all, or fast (each resolution stage kept fp32 where "
        "that measures faster in the whole graph)")
    cache_dir: str | None = Field(None, description="latency table cache (default: per user)")


class FinetuneSection(_Section):
    epochs: Count = Field(1, description="fine-tune epochs (0 skips fine-tuning)")
    teacher: str = Field("parent", description="model to distil from: parent, none, or a "
                         "model name/folder")
    kd_weight: float = Field(0.5, ge=0, le=1, description="share of the distillation term in "
                             "the loss, 0-1")
    kd_temperature: float = Field(4.0, gt=0, description="softmax temperature")
    lr: float = Field(0.01, gt=0, description="peak learning rate")
    batch_size: Positive = Field(128, description="training batch size")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    recal_batches: Count = Field(20, description="BN re-estimation batches before the first "
                                 "epoch (0: off)")
    recal_end: bool = Field(True, description="re-estimate BN after the last epoch")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="training precision")
    threads: Positive | None = Field(None, description="CPU threads (default: all)")
    nproc: Positive = Field(1, description="processes fine-tuning under torchrun DDP (gloo on "
                            "CPU, nccl on GPUs); the global batch is nproc x batch_size")


class VerifySection(_Section):
    warmup: Count = Field(20, description="untimed runs before the final measurement")
    repeats: Annotated[int, Field(ge=3)] = Field(200, description="timed runs of the final "
                                                 "measurement, per session")
    min_seconds: Annotated[float, Field(ge=0, le=600)] = Field(
        3.0, description="time each session for at least this many seconds (more rounds than "
        "repeats on a small model: a median over a fraction of a second is at the mercy of one "
        "burst of load)")
    sessions: Annotated[int, Field(ge=1, le=50)] = Field(
        5, description="fresh runtime sessions per model, the fastest session's median reported "
        "(a stretch of interference can slow a whole session)")
    processes: Annotated[int, Field(ge=0, le=64)] = Field(
        6, description="fresh processes timing final vs unpruned paired, one sample each, for the "
        "speed-up's 95% interval (0: paired sessions in this process)")


class TrainSection(_Section):
    """``prunelab train``: training a zoo architecture from scratch."""

    epochs: Positive = Field(30, description="training epochs")
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    batch_size: Positive = Field(128, description="training batch size")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    seed: int = Field(0, description="seed of the initialisation and the data order")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="training precision")
    threads: Positive | None = Field(None, description="CPU threads (default: all)")


SECTIONS = {"run": RunSection, "model": ModelSection, "search": SearchSection,
            "target": TargetSection, "finetune": FinetuneSection, "verify": VerifySection}
# sections of other commands (not tables of a run config)
COMMAND_SECTIONS = {"train": TrainSection}


def _section(name: str, raw: Any, style: str = "toml"):
    """Validate one table (or, with ``cli``, the command-line flags made from it by
    :func:`prunelab.cli.common.section_flags`); a pydantic error becomes one line naming the key
    (or ``--flag``) and what it takes."""
    from pydantic import ValidationError

    cls = {**SECTIONS, **COMMAND_SECTIONS}[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PrunelabError(f"config [{name}] must be a table of keys, e.g. [{name}] on its own "
                            "line followed by key = value lines")
    # TOML has no float literal for a whole number: 1 is a fine learning rate
    raw = {k: float(v) if type(v) is int and k in cls.model_fields
           and cls.model_fields[k].annotation is float else v for k, v in raw.items()}
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            raise PrunelabError(f"config section [{name}] has no key {key!r}; it takes: "
                                f"{', '.join(cls.model_fields)}") from None
        f = cls.model_fields.get(str(err["loc"][0]))
        what = f" ({f.description})" if f is not None and f.description else ""
        v = raw.get(err["loc"][0])
        where = {"cli": f"--{key.replace('_', '-')} {v}", "kwargs": f"{key}={v!r}"}.get(
            style, f"config [{name}] {key} = {v!r}")
        raise PrunelabError(f"{where}: {err['msg'].lower()}{what}") from None


def check_section(name: str, values: dict, cli: bool = False, style: str | None = None):
    """The typed section ``name`` of ``values`` (unknown keys, types, ranges checked); errors
    name the key as a TOML key, a ``--flag`` (``cli``) or a keyword (``style="kwargs"``)."""
    return _section(name, values, style or ("cli" if cli else "toml"))


def default(section: str, key: str):
    """A key's default, read from its section (the one place it is written); None where the
    section or key does not exist."""
    cls = {**SECTIONS, **COMMAND_SECTIONS}.get(section)
    f = cls.model_fields.get(key) if cls is not None else None
    return None if f is None else f.get_default(call_default_factory=True)


def keys(section: str) -> list[str]:
    """The keys of a section, in order."""
    return list({**SECTIONS, **COMMAND_SECTIONS}[section].model_fields)
