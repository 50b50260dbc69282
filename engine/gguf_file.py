"""Read a GGUF header: model shape, chat template and the tensor inventory grouped by role."""

from __future__ import annotations

import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from engine.context_memory import ContextMemory
from engine.errors import ModelFileError
from engine.units import format_bytes

GGUF_MAGIC = b"GGUF"

# Architecture names known to the engine we pin (llama-cpp-python 0.3.36, llama.cpp 0c1e57098),
# copied from LLM_ARCH_NAMES in its src/llama-arch.cpp. A file naming anything else cannot load.
SUPPORTED_ARCHITECTURES = frozenset(
    """
    llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert
    modern-bert nomic-bert nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 eurobert bloom
    stablelm qwen qwen2 qwen2moe qwen2vl qwen3 qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35
    qwen35moe qwen4exp phi2 phi3 phimoe plamo plamo2 plamo3 codeshell orion internlm2
    minicpm minicpm3 gemma gemma2 gemma3 gemma3n gemma4 gemma4-assistant gemma-embedding
    starcoder2 mamba mamba2 maple jamba falcon-h1 xverse command-r cohere2 cohere2moe dbrx
    olmo olmo2 olmoe muse-glimmer openelm arctic deepseek deepseek2 deepseek2-ocr deepseek32
    deepseek4 chatglm glm4 glm4moe glm-dsa bitnet t5 t5encoder jais jais2 nemotron
    nemotron_h nemotron_h_moe exaone exaone4 exaone-moe rwkv6 rwkv6qwen2 rwkv7 arwkv7
    granite granitemoe granitehybrid graniteswitch granite_swa chameleon plm bailingmoe
    bailingmoe2 bailingmoe3 dots1 dots3note arcee afmoe laguna ernie4_5 ernie4_5-moe
    hunyuan-moe hunyuan-dense hunyuan_vl hy_v3 hy_v4 smollm3 gpt-oss lfm2 lfm2moe dream
    smallthinker llada llada-moe seed_oss grovemoe apertus minimax-01 hrm_text minimax-m2
    minimax-m3 cogvlm rnd1 pangu-embedded mistral3 mistral4
    """.split()
)

# Files that hold no chat model (encoders, audio decoders, projectors for images).
NOT_CHAT_ARCHITECTURES = frozenset(
    {
        "clip",
        "wavtokenizer-dec",
        "bert",
        "modern-bert",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "eurobert",
        "t5encoder",
        "gemma-embedding",
    }
)


class Role(str, Enum):
    """What a tensor is for, which decides how often decoding reads it."""

    TOKEN_EMBEDDINGS = "token_embeddings"
    OUTPUT_HEAD = "output_head"
    ATTENTION = "attention"
    NORMS = "norms"
    ROUTER = "router"
    ROUTED_EXPERTS = "routed_experts"
    SHARED_EXPERTS = "shared_experts"
    DENSE_FFN = "dense_ffn"
    OTHER = "other"
    UNUSED = "unused"  # in the file, never loaded: multi-token-prediction blocks


_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def classify_tensor(name: str) -> Role:
    """Map a llama.cpp tensor name (``blk.7.ffn_up_exps.weight``) to its role."""
    base = _LAYER_RE.sub("", name)
    if base.startswith("token_embd") and "norm" not in base:
        return Role.TOKEN_EMBEDDINGS
    if base.startswith("output.") or base == "output":
        return Role.OUTPUT_HEAD
    if "_shexp" in base:
        return Role.SHARED_EXPERTS
    if "_exps" in base:
        return Role.ROUTED_EXPERTS
    if base.startswith("ffn_gate_inp") or "exp_probs_b" in base:
        return Role.ROUTER
    if "norm" in base:
        return Role.NORMS
    if base.startswith(("attn_", "rope_", "ssm_", "shortconv.")):
        return Role.ATTENTION  # token mixing: attention, or the Mamba-2/conv layer in its place
    if base.startswith(("ffn_gate", "ffn_up", "ffn_down")):
        return Role.DENSE_FFN
    return Role.OTHER


def tensor_layer(name: str) -> int | None:
    """The block index in a tensor name, or None for global tensors."""
    match = _LAYER_RE.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: where it belongs and how many bytes it stores."""

    name: str
    ggml_type: str
    shape: tuple[int, ...]
    n_bytes: int
    role: Role
    layer: int | None


@dataclass(frozen=True)
class GGUFInfo:
    """What the header of one GGUF file says about the model inside."""

    path: Path
    file_size: int
    architecture: str
    name: str
    file_type: str
    n_layers: int
    context_length: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_experts: int
    n_experts_used: int
    n_shared_experts: int
    expert_ffn_length: int
    chat_template: str | None
    tensors: tuple[TensorInfo, ...]
    parts: tuple[Path, ...] = ()  # every file of the model: just ``path`` unless it is split
    # Per-token cache and fixed state by attention kind; None: every layer full attention
    context_memory: ContextMemory | None = None
    n_nextn_layers: int = 0  # multi-token-prediction blocks after the trunk (never loaded)
    # The sampling its makers recommend (``general.sampling.*``), as SamplingSettings fields.
    sampling: tuple[tuple[str, float], ...] = ()
    # Each layer's experts hottest first (engine.reorder wrote the file), so a hot set is
    # a leading slice: what the hot-experts engine splits off.
    heat_ordered: bool = False

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 1

    @property
    def tied_output(self) -> bool:
        """No output head of its own: the engine reuses (and, on a GPU, copies) the embeddings."""
        return not any(t.role is Role.OUTPUT_HEAD for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def bytes_by_role(self) -> dict[Role, int]:
        """Bytes stored per role; every role is present, zero where the model has none."""
        totals = dict.fromkeys(Role, 0)
        for tensor in self.tensors:
            totals[tensor.role] += tensor.n_bytes
        return totals

    def expert_bytes_by_layer(self) -> dict[int, int]:
        """Routed-expert bytes stored in each MoE layer."""
        totals: Counter[int] = Counter()
        for tensor in self.tensors:
            if tensor.role is Role.ROUTED_EXPERTS and tensor.layer is not None:
                totals[tensor.layer] += tensor.n_bytes
        return dict(sorted(totals.items()))


_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


EXPERT_ORDER_KEY = "moe_chat.expert_order"  # written by engine.reorder


def read_gguf(path: str | Path) -> GGUFInfo:
    """Read the header and tensor table of a GGUF file without loading weights.

    A split model (``name-00001-of-00003.gguf``…) is read whole: given any of its parts,
    every part is read and the inventory covers all of them; ``path`` of the result is the
    first part, which is what the engine loads.

    Args:
        path: the ``.gguf`` file, or any part of a split model.

    Returns:
        The model's facts and tensor inventory.

    Raises:
        ModelFileError: a file is missing, unreadable, not GGUF, cut short, or holds an
            architecture this engine cannot run; or a part of a split model is missing.
    """
    path = Path(path)
    shard = _SHARD_RE.match(path.name)
    if shard and int(shard["no"]) != 1 and int(shard["count"]) > 1:
        path = path.with_name(f"{shard['prefix']}-00001-of-{shard['count']}.gguf")
    header, file_size = _read_header(path)
    tensors = _tensor_table(header, path, file_size)
    split_count = int(header.fields.get("split.count", 1) or 1)
    total_size = file_size
    parts = [path]
    for number in range(2, split_count + 1):
        prefix = shard["prefix"] if shard else path.name.removesuffix(".gguf")
        part = path.with_name(f"{prefix}-{number:05d}-of-{split_count:05d}.gguf")
        if not part.is_file():
            raise ModelFileError(
                f"{path.name} is part 1 of a model split in {split_count} files, and part "
                f"{number} ({part.name}) is missing.",
                "Put all parts in the same folder; download the missing one again.",
            )
        part_header, part_size = _read_header(part)
        tensors += _tensor_table(part_header, part, part_size)
        total_size += part_size
        parts.append(part)
    return replace(_info_from_header(header, path, total_size, tensors), parts=tuple(parts))


def read_header_extent(path: str | Path) -> int:
    """The file size a GGUF's header describes: where its last tensor's data ends."""
    path = Path(path)
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        header = _HeaderParser(buf).parse()
    end = header.data_start
    for name, ggml_type, shape, offset in header.tensors:
        end = max(end, header.data_start + offset + _tensor_bytes(ggml_type, shape, name)[1])
    return end


def _read_header(path: Path) -> tuple[_Header, int]:
    shown = path.name
    if not path.exists():
        raise ModelFileError(f"The model file {shown} does not exist.", "Choose another file.")
    if not path.is_file():
        raise ModelFileError(f"{shown} is a folder, not a model file.", "Choose a .gguf file.")
    try:
        file_size = path.stat().st_size
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelFileError(f"{shown} cannot be read: {exc.strerror}.") from exc
    if file_size == 0:
        raise ModelFileError(f"{shown} is empty.", "Download it again.")
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{shown} is not a GGUF model file.",
            "MoE Chat runs llama.cpp GGUF files; pick a file ending in .gguf.",
        )
    try:
        with (
            path.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf,
        ):
            return _HeaderParser(buf).parse(), file_size
    except _Truncated as exc:
        raise ModelFileError(
            f"{shown} is incomplete: it ends inside its own header.",
            "The download was probably cut short; download it again.",
        ) from exc
    except _Corrupt as exc:
        raise ModelFileError(
            f"{shown} is damaged: {exc}.", "If it was downloaded, download it again."
        ) from exc
    except OSError as exc:
        raise ModelFileError(f"{shown} cannot be read: {exc.strerror}.") from exc


def _tensor_table(header: _Header, path: Path, file_size: int) -> list[TensorInfo]:
    """The tensors one file holds, checked to lie inside it."""
    tensors: list[TensorInfo] = []
    end_of_data = header.data_start
    for name, ggml_type, shape, offset in header.tensors:
        try:
            type_name, n_bytes = _tensor_bytes(ggml_type, shape, name)
        except _Corrupt as exc:
            raise ModelFileError(f"{path.name} is damaged: {exc}.") from exc
        end_of_data = max(end_of_data, header.data_start + offset + n_bytes)
        tensors.append(
            TensorInfo(
                name=name,
                ggml_type=type_name,
                shape=shape,
                n_bytes=n_bytes,
                role=classify_tensor(name),
                layer=tensor_layer(name),
            )
        )
    if end_of_data > file_size:
        raise ModelFileError(
            f"{path.name} is incomplete: it has {format_bytes(file_size)} of the "
            f"{format_bytes(end_of_data)} its header describes.",
            "The download was probably cut short; download it again.",
        )
    return tensors


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


# GGUF value types: (struct format, size) for the scalar ones.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
# Keys whose array values we keep; every other array (vocabularies) is skipped unread.
_ARRAYS_KEPT = (
    "attention.head_count",
    "attention.head_count_kv",
    "feed_forward_length",
    "attention.sliding_window_pattern",
)


@dataclass
class _Header:
    fields: dict[str, Any]
    # (name, ggml type id, shape, offset relative to the data section)
    tensors: list[tuple[str, int, tuple[int, ...], int]]
    data_start: int


class _HeaderParser:
    """Walks the GGUF header in a memory map; never touches tensor data."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def _take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise _Truncated
        self.pos = start + n
        return start

    def _scalar(self, kind: int) -> Any:
        fmt, size = _SCALARS[kind]
        return struct.unpack_from(fmt, self.buf, self._take(size))[0]

    def _u32(self) -> int:
        return int(self._scalar(4))

    def _u64(self) -> int:
        return int(self._scalar(10))

    def _string(self) -> str:
        length = self._u64()
        start = self._take(length)
        return bytes(self.buf[start : start + length]).decode("utf-8", errors="replace")

    def _value(self, kind: int, keep_array: bool) -> Any:
        if kind in _SCALARS:
            return self._scalar(kind)
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item_kind = self._u32()
            count = self._u64()
            if count > 1 << 40:
                raise _Corrupt("an array claims an impossible number of items")
            if item_kind in _SCALARS:
                start = self._take(count * _SCALARS[item_kind][1])
                if not keep_array:
                    return None
                fmt = "<" + _SCALARS[item_kind][0][1] * count
                return list(struct.unpack_from(fmt, self.buf, start))
            if item_kind == _STRING:
                for _ in range(count):
                    self._take(self._u64())
                return None
            raise _Corrupt(f"unsupported array item type {item_kind}")
        raise _Corrupt(f"unknown value type {kind}")

    def parse(self) -> _Header:
        self._take(4)  # magic, checked by the caller
        version = self._u32()
        if version not in (2, 3):
            raise _Corrupt(f"GGUF version {version} is not supported")
        n_tensors = self._u64()
        n_fields = self._u64()
        if n_tensors > 1 << 32 or n_fields > 1 << 32:
            raise _Corrupt("its header counts are impossible")
        fields: dict[str, Any] = {}
        for _ in range(n_fields):
            key = self._string()
            kind = self._u32()
            fields[key] = self._value(kind, keep_array=key.endswith(_ARRAYS_KEPT))
        tensors = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._u32()
            if n_dims > 8:
                raise _Corrupt(f"tensor {name} has {n_dims} dimensions")
            shape = tuple(self._u64() for _ in range(n_dims))
            ggml_type = self._u32()
            offset = self._u64()
            tensors.append((name, ggml_type, shape, offset))
        alignment = int(fields.get("general.alignment", 32) or 32)
        if alignment & (alignment - 1):
            raise _Corrupt(f"alignment {alignment} is not a power of two")
        data_start = -(-self.pos // alignment) * alignment
        return _Header(fields=fields, tensors=tensors, data_start=data_start)


def _tensor_bytes(ggml_type: int, shape: tuple[int, ...], name: str) -> tuple[str, int]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        kind = GGMLQuantizationType(ggml_type)
    except ValueError as exc:
        raise _Corrupt(f"tensor {name} has unknown type {ggml_type}") from exc
    block, type_size = GGML_QUANT_SIZES[kind]
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    if shape and shape[0] % block:
        raise _Corrupt(f"tensor {name} rows do not fit its {kind.name} blocks")
    return kind.name, n_elements // block * type_size


def _info_from_header(
    header: _Header, path: Path, file_size: int, tensors: list[TensorInfo]
) -> GGUFInfo:
    shown = path.name
    fields = header.fields

    def value(key: str, default: Any = None) -> Any:
        return fields.get(key, default)

    arch = value("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{shown} does not say which model architecture it holds.")
    if arch in NOT_CHAT_ARCHITECTURES:
        raise ModelFileError(
            f"{shown} holds a '{arch}' model, which is not a chat model.",
            "Pick the language model's .gguf file.",
        )
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFileError(
            f"{shown} holds a '{arch}' model, which this version of the engine cannot run.",
            "Pick another model, or update MoE Chat.",
        )

    if not tensors:
        raise ModelFileError(f"{shown} holds no weights.")

    def arch_int(key: str, default: int = 0) -> int:
        raw = value(f"{arch}.{key}", default)
        if isinstance(raw, list):  # per-layer arrays (e.g. head counts that vary by layer)
            raw = max(raw) if raw else default
        return int(raw)

    n_experts, n_used = arch_int("expert_count"), arch_int("expert_used_count")
    if n_experts and not 0 < n_used <= n_experts:
        # The engine aborts the whole process on this instead of returning an error.
        raise ModelFileError(
            f"{shown} is damaged: it declares {n_experts} experts but {n_used} used per token."
        )
    n_embd = arch_int("embedding_length")
    n_nextn = arch_int("nextn_predict_layers")
    n_head = arch_int("attention.head_count")
    head_dim = arch_int("attention.key_length") or (n_embd // n_head if n_head else 0)
    template = value("tokenizer.chat_template")
    trunk = arch_int("block_count") - n_nextn
    if n_nextn:  # the engine skips these blocks unless asked for speculative decoding
        tensors = [
            replace(t, role=Role.UNUSED) if t.layer is not None and t.layer >= trunk else t
            for t in tensors
        ]
    return GGUFInfo(
        path=path,
        file_size=file_size,
        architecture=arch,
        name=str(value("general.name", path.stem)),
        file_type=_file_type(value("general.file_type"), tensors),
        n_layers=arch_int("block_count") - n_nextn,
        context_length=arch_int("context_length"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=arch_int("attention.head_count_kv") or n_head,
        head_dim=head_dim,
        n_experts=n_experts,
        n_experts_used=n_used,
        n_shared_experts=arch_int("expert_shared_count"),
        expert_ffn_length=arch_int("expert_feed_forward_length"),
        chat_template=template if isinstance(template, str) and template else None,
        tensors=tuple(tensors),
        context_memory=ContextMemory.from_header(arch, lambda key: value(f"{arch}.{key}")),
        n_nextn_layers=n_nextn,
        sampling=tuple(
            (name, float(raw))
            for key, name in _SAMPLING_KEYS.items()
            if isinstance(raw := value(f"general.sampling.{key}"), (int, float))
            and not isinstance(raw, bool)
        ),
        heat_ordered=EXPERT_ORDER_KEY in fields,
    )


# general.sampling.* keys (llama.cpp's gguf constants) -> SamplingSettings fields
_SAMPLING_KEYS = {
    "temp": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "penalty_repeat": "repeat_penalty",
    "penalty_last_n": "repeat_last_n",
}


def _file_type(raw: Any, tensors: list[TensorInfo]) -> str:
    from gguf import LlamaFileType

    if raw is not None:
        try:
            return LlamaFileType(int(raw)).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    # No (or an unknown) declared type: name it after the type that stores most bytes.
    by_type: Counter[str] = Counter()
    for tensor in tensors:
        by_type[tensor.ggml_type] += tensor.n_bytes
    return by_type.most_common(1)[0][0] if by_type else "unknown"
