"""The model catalog (resources/catalog.json): MoE families, their shapes and their GGUF files.

File names and sizes in the catalog are the ones seen when it was written; the downloader
reads the real list, sizes and hashes from the Hub, and the planner treats catalog sizes as
estimates until the file is on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from engine.context_memory import ContextMemory, spread_layers
from engine.errors import MoeChatError

# Average bits per weight of llama.cpp's quantization mixes, for sizes the catalog lacks.
BITS_PER_WEIGHT = {
    "Q2_K": 3.0,
    "Q3_K_M": 3.9,
    "Q4_0": 4.55,
    "Q4_K_M": 4.85,
    "MXFP4": 4.6,
    "Q5_K_M": 5.7,
    "Q6_K": 6.6,
    "Q8_0": 8.5,
    "F16": 16.0,
    "BF16": 16.0,
}
# Higher is closer to the original weights; used to rank quantizations of one model.
QUANT_QUALITY = {"Q2_K": 1, "Q3_K_M": 2, "Q4_0": 3, "Q4_K_M": 4, "MXFP4": 4, "Q5_K_M": 5,
                 "Q6_K": 6, "Q8_0": 7, "F16": 8, "BF16": 8}  # fmt: skip


# Low-bit quants lose enough quality that a smaller model at 4 bits or more usually answers
# better; the ranking subtracts this from the model's quality rank.
QUANT_RANK_PENALTY = {"Q2_K": 25, "Q3_K_M": 8}


class CatalogError(MoeChatError):
    """The catalog file is missing or malformed."""


@dataclass(frozen=True)
class CatalogQuant:
    """One quantization of a model and where its GGUF file(s) live on the Hub."""

    quant: str
    repo: str
    files: tuple[str, ...]
    size_bytes: int | None
    verification: str

    @property
    def quality(self) -> int:
        return QUANT_QUALITY.get(self.quant, 0)

    @property
    def rank_penalty(self) -> int:
        return QUANT_RANK_PENALTY.get(self.quant, 0)


@dataclass(frozen=True)
class CatalogModel:
    """One MoE model: what it is and the numbers the planner needs."""

    id: str
    display_name: str
    family: str
    license: str
    total_params_b: float
    active_params_b: float
    n_layers: int
    n_embd: int
    n_experts: int
    n_experts_used: int
    n_shared_experts: int
    expert_ffn: int | None
    n_heads: int | None
    n_kv_heads: int | None
    head_dim: int | None
    native_context: int | None
    n_vocab: int | None
    architecture: str
    quality_rank: int
    description: str
    quants: tuple[CatalogQuant, ...]
    # GGUF header keys (without the architecture prefix) that decide its context memory:
    # sliding window, MLA widths, SSM/conv sizes; "attention_layers" counts the layers with
    # attention in a hybrid. Empty: full attention on every layer.
    memory: tuple[tuple[str, Any], ...] = ()
    unverified: tuple[str, ...] = ()  # fields taken from recall, not from shared/facts
    # The family's recommended sampling (SamplingSettings field names), and where it is from.
    sampling: tuple[tuple[str, float], ...] = ()
    sampling_source: str = ""

    def context_memory(self) -> ContextMemory:
        """The model's context memory, as its GGUF header will describe it."""
        heads = self.n_heads or max(1, self.n_embd // 128)
        fields: dict[str, Any] = {
            "block_count": self.n_layers,
            "embedding_length": self.n_embd,
            "attention.head_count": heads,
            "attention.head_count_kv": self.n_kv_heads or heads,
            "attention.key_length": self.head_dim or self.n_embd // heads,
            "attention.value_length": self.head_dim or self.n_embd // heads,
        }
        fields.update(dict(self.memory))
        attention_layers = fields.pop("attention_layers", None)
        if attention_layers is not None:  # a hybrid: the rest are recurrent layers
            chosen = set(spread_layers(self.n_layers, attention_layers))
            kv = int(fields["attention.head_count_kv"])
            fields["attention.head_count_kv"] = [
                kv if i in chosen else 0 for i in range(self.n_layers)
            ]
        return ContextMemory.from_header(self.architecture, fields.get)

    def quant(self, name: str) -> CatalogQuant:
        for quant in self.quants:
            if quant.quant == name:
                return quant
        raise CatalogError(f"{self.display_name} has no {name} file in the catalog.")

    def size_estimate(self, quant: CatalogQuant) -> int:
        """The file size: the catalog's figure, else total parameters x the quant's bits."""
        if quant.size_bytes:
            return quant.size_bytes
        bits = BITS_PER_WEIGHT.get(quant.quant, 8.5)
        return int(self.total_params_b * 1e9 * bits / 8)

    @property
    def expert_share(self) -> float:
        """Share of all parameters that are routed experts.

        With A always-read parameters and p parameters per expert (over all layers),
        total = A + E·p and active = A + k·p, so p = (total - active) / (E - k).
        """
        spread = self.n_experts - self.n_experts_used
        if spread <= 0:
            return 0.0
        per_expert = (self.total_params_b - self.active_params_b) / spread
        return min(1.0, max(0.0, self.n_experts * per_expert / self.total_params_b))


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "display_name": str,
    "family": str,
    "license": str,
    "total_params_b": (int, float),
    "active_params_b": (int, float),
    "n_layers": int,
    "n_embd": int,
    "n_experts": int,
    "n_experts_used": int,
    "architecture": str,
    "quality_rank": int,
    "description": str,
    "quants": list,
}
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens")
_OPTIONAL_INTS = ("n_shared_experts", "expert_ffn", "n_heads", "n_kv_heads", "head_dim",
                  "native_context", "n_vocab")  # fmt: skip


def load_catalog(path: str | Path | None = None) -> list[CatalogModel]:
    """Read and validate the catalog.

    Args:
        path: a catalog file; the one shipped in ``resources`` when omitted.

    Raises:
        CatalogError: the file cannot be read or an entry is malformed (the message says
            which entry and which field).
    """
    try:
        if path is None:
            text = resources.files("resources").joinpath("catalog.json").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        document = json.loads(text)
    except (OSError, ValueError) as exc:
        raise CatalogError(f"The model catalog cannot be read: {exc}.") from exc
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise CatalogError("The model catalog has no list of models.")
    models: list[CatalogModel] = []
    seen: set[str] = set()
    for index, raw in enumerate(document["models"]):
        model = _model(raw, index)
        if model.id in seen:
            raise CatalogError(f"The model catalog lists '{model.id}' twice.")
        seen.add(model.id)
        models.append(model)
    return models


def _model(raw: Any, index: int) -> CatalogModel:
    where = f"entry {index + 1}"
    if not isinstance(raw, dict):
        raise CatalogError(f"Catalog {where} is not an object.")
    where = f"entry {index + 1} ({raw.get('id', 'no id')})"
    for key, kind in _REQUIRED.items():
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            raise CatalogError(f"Catalog {where}: '{key}' is missing or has the wrong type.")
    for key in _OPTIONAL_INTS:
        value = raw.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise CatalogError(f"Catalog {where}: '{key}' must be a whole number or null.")
    if not 0 < raw["n_experts_used"] <= raw["n_experts"]:
        raise CatalogError(f"Catalog {where}: experts used must be between 1 and the expert count.")
    if not 0 < raw["active_params_b"] <= raw["total_params_b"]:
        raise CatalogError(f"Catalog {where}: active parameters must not exceed the total.")
    if not raw["quants"]:
        raise CatalogError(f"Catalog {where}: no quantization is listed.")
    quants = tuple(_quant(q, where) for q in raw["quants"])
    fields = {key: raw[key] for key in _REQUIRED if key != "quants"}
    fields.update({key: raw.get(key) for key in _OPTIONAL_INTS})
    fields["n_shared_experts"] = fields["n_shared_experts"] or 0
    memory = raw.get("memory", {})
    if not isinstance(memory, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in memory.values()
    ):
        raise CatalogError(f"Catalog {where}: 'memory' must map header keys to numbers.")
    fields["memory"] = tuple(sorted(memory.items()))
    unverified = raw.get("unverified", [])
    if not isinstance(unverified, list) or not all(isinstance(u, str) for u in unverified):
        raise CatalogError(f"Catalog {where}: 'unverified' must list field names.")
    fields["unverified"] = tuple(unverified)
    sampling = raw.get("sampling", {})
    if not isinstance(sampling, dict) or not all(
        key in SAMPLING_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
        for key, value in sampling.items()
    ):
        raise CatalogError(f"Catalog {where}: 'sampling' must map {SAMPLING_KEYS} to numbers.")
    if sampling and not isinstance(raw.get("sampling_source"), str):
        raise CatalogError(f"Catalog {where}: 'sampling' needs a 'sampling_source'.")
    fields["sampling"] = tuple(sorted(sampling.items()))
    fields["sampling_source"] = raw.get("sampling_source", "")
    fields["total_params_b"] = float(fields["total_params_b"])
    fields["active_params_b"] = float(fields["active_params_b"])
    return CatalogModel(**fields, quants=quants)


def _quant(raw: Any, where: str) -> CatalogQuant:
    if not isinstance(raw, dict):
        raise CatalogError(f"Catalog {where}: a quantization is not an object.")
    quant, repo, files = raw.get("quant"), raw.get("repo"), raw.get("files")
    if not isinstance(quant, str) or not isinstance(repo, str) or "/" not in repo:
        raise CatalogError(f"Catalog {where}: a quantization lacks its name or 'owner/repo'.")
    if (
        not isinstance(files, list)
        or not files
        or not all(isinstance(f, str) and f.endswith(".gguf") for f in files)
    ):
        raise CatalogError(f"Catalog {where}, {quant}: 'files' must list .gguf file names.")
    size = raw.get("size_bytes")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise CatalogError(f"Catalog {where}, {quant}: 'size_bytes' must be positive or null.")
    return CatalogQuant(
        quant=quant,
        repo=repo,
        files=tuple(files),
        size_bytes=size,
        verification=str(raw.get("verification", "")),
    )
