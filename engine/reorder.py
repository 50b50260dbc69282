"""Rewrite a GGUF with each layer's experts in order of heat, hottest first.

Expert ids are only positions along the expert axis: permuting, per layer, the router rows
(and router bias, ``exp_probs_b``) together with every ``*_exps`` weight, bias and scale
gives the same model, token for token. Shared experts (``*_shexp``) are not routed and stay.
With the hot experts contiguous, a per-expert placement can take a leading slice of each
layer, and experts streamed from disk are read from fewer pages.

Architectures that route through expert groups (DeepSeek-V3's ``expert_group_count`` > 1,
GroveMoE) pick groups by position, so a permutation would change the model: refused.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFileError
from engine.placement import EXPERT_KINDS

ORDER_KEY = "moe_chat.expert_order"  # per layer, the original id of each new position
GROUPED_ARCHITECTURES = {"grovemoe"}
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")
# What holds one row per expert: the experts themselves, the router, the router's bias.
_ROUTED = re.compile(
    rf"^(ffn_({'|'.join(EXPERT_KINDS)})_exps\.(weight|bias|scale)|ffn_gate_inp\.(weight|bias)"
    r"|exp_probs_b\.bias)$"
)


def heat_order(counts: np.ndarray) -> np.ndarray:
    """Per layer, expert ids from hottest to coldest (ties keep their id order)."""
    return np.argsort(-np.asarray(counts), axis=-1, kind="stable")


def reorder_experts(src: str | Path, dst: str | Path, order: np.ndarray | Sequence[Any]) -> Path:
    """Write ``dst``: ``src`` with layer L's expert ``order[L][i]`` moved to position i.

    ``order`` has one row per layer (rows of layers without experts are ignored). The new
    file records the permutation under ``moe_chat.expert_order``.

    Raises:
        ModelFileError: not a single-file MoE GGUF, grouped routing, or a wrong ``order``.
    """
    from gguf import GGUFReader, GGUFWriter

    src, dst = Path(src), Path(dst)
    if re.search(r"-\d{5}-of-\d{5}\.gguf$", src.name):
        raise ModelFileError(
            f"{src.name} is one part of a split model; the expert reordering tool rewrites "
            "single-file models only.",
            "Merge the parts with llama.cpp's gguf-split --merge first.",
        )
    reader = GGUFReader(src)
    arch = str(reader.fields["general.architecture"].contents())
    n_experts = _int_field(reader, f"{arch}.expert_count")
    groups = _int_field(reader, f"{arch}.expert_group_count")
    if arch in GROUPED_ARCHITECTURES or groups > 1:
        raise ModelFileError(
            f"{src.name} ({arch}) routes tokens through groups of experts, chosen by position; "
            "reordering its experts would change what the model computes.",
            "Nothing to do: this model is used as it is.",
        )
    if n_experts < 2:
        raise ModelFileError(f"{src.name} is not a Mixture-of-Experts model: nothing to reorder.")
    order = np.asarray(order, dtype=np.int64)
    if order.ndim != 2 or order.shape[1] != n_experts:
        raise ModelFileError(f"The expert order must have {n_experts} entries per layer.")
    for layer, row in enumerate(order):
        if sorted(row.tolist()) != list(range(n_experts)):
            raise ModelFileError(f"The expert order of layer {layer} is not a permutation.")

    writer = GGUFWriter(dst, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", ORDER_KEY):
            continue
        copy_field(writer, key, field)
    permuted_layers: set[int] = set()
    for tensor in reader.tensors:
        data = np.asarray(tensor.data)
        match = _LAYER_TENSOR.match(tensor.name)
        if match and _ROUTED.match(match.group(2)):
            layer = int(match.group(1))
            if layer >= len(order) or data.shape[0] != n_experts:
                raise ModelFileError(
                    f"{tensor.name} has {data.shape[0]} rows along the expert axis, "
                    f"the header says {n_experts} experts."
                )
            data = np.ascontiguousarray(data[order[layer]])
            permuted_layers.add(layer)
        writer.add_tensor(tensor.name, data, raw_dtype=tensor.tensor_type)
    identity = np.arange(n_experts)
    recorded = [
        order[layer] if layer in permuted_layers else identity for layer in range(len(order))
    ]
    writer.add_array(ORDER_KEY, [int(i) for row in recorded for i in row])
    write_gguf(writer)
    return dst


def copy_field(writer: Any, key: str, field: Any) -> None:
    """Copy one metadata field of a GGUFReader into a GGUFWriter, types kept."""
    from gguf import GGUFValueType

    kind = field.types[0]
    sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
    writer.add_key_value(key, field.contents(), kind, sub)


def write_gguf(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _int_field(reader: Any, key: str) -> int:
    field = reader.fields.get(key)
    return int(field.contents()) if field is not None else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.reorder MODEL.gguf [OUT.gguf]``: reorder by the heat counted in the
    app (View → Experts) for MODEL.gguf. Prints what it did; exit 1 with the reason if not."""
    import argparse

    from engine.heat import HeatProfile, model_key

    parser = argparse.ArgumentParser(prog="python -m engine.reorder", description=main.__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    args = parser.parse_args(argv)
    src: Path = args.model
    dst: Path = args.out or src.with_name(f"{src.stem}.by-heat.gguf")
    if not src.is_file():
        print(f"{src} is not a file.", file=sys.stderr)
        return 1
    heat = HeatProfile.load(model_key(src))
    if heat is None or heat.total.sum() == 0:
        print(
            f"No expert heat was counted for {src.name}. Load it in MoE Chat, turn counting on "
            "in View → Experts, and chat for a while first.",
            file=sys.stderr,
        )
        return 1
    if dst.exists():
        print(f"{dst} already exists; name another output file.", file=sys.stderr)
        return 1
    try:
        reorder_experts(src, dst, heat_order(heat.total))
    except ModelFileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    tokens = heat.tokens["prompt"] + heat.tokens["generation"]
    print(f"wrote {dst}: experts ordered by the heat of {tokens:,} counted tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
