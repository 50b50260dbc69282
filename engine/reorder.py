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

import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFileError
from engine.gguf_file import EXPERT_ORDER_KEY
from engine.placement import EXPERT_KINDS
from engine.units import format_bytes

ORDER_KEY = EXPERT_ORDER_KEY  # per layer, the original id of each new position
BY_HEAT = ".by-heat"  # the reordered copy's name: MODEL.by-heat.gguf
DISK_SLACK = 1 << 30  # left free on the disk after the copy
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


def reorder_experts(
    src: str | Path,
    dst: str | Path,
    order: np.ndarray | Sequence[Any],
    on_progress: Callable[[float], bool] | None = None,
) -> Path:
    """Write ``dst``: ``src`` with layer L's expert ``order[L][i]`` moved to position i.

    ``order`` has one row per layer (rows of layers without experts are ignored). The new
    file records the permutation under ``moe_chat.expert_order``. Tensors are written one at
    a time (memory: the largest tensor), through ``dst.partial``, renamed when complete;
    ``on_progress`` gets the share of bytes written and cancels by returning False.

    Raises:
        ModelFileError: not a single-file MoE GGUF, grouped routing, a wrong ``order``, a
            full disk, or a cancel (no file is left behind).
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

    permuted: dict[str, int] = {}  # tensor name -> its layer, for the routed ones
    for tensor in reader.tensors:
        match = _LAYER_TENSOR.match(tensor.name)
        if match and _ROUTED.match(match.group(2)):
            layer, rows = int(match.group(1)), tensor.data.shape[0]
            if layer >= len(order) or rows != n_experts:
                raise ModelFileError(
                    f"{tensor.name} has {rows} rows along the expert axis, "
                    f"the header says {n_experts} experts."
                )
            permuted[tensor.name] = layer
    identity = np.arange(n_experts)
    layers = set(permuted.values())
    recorded = [order[i] if i in layers else identity for i in range(len(order))]

    partial = dst.with_name(dst.name + ".partial")
    writer = GGUFWriter(partial, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", ORDER_KEY):
            continue
        copy_field(writer, key, field)
    writer.add_array(ORDER_KEY, [int(i) for row in recorded for i in row])
    for tensor in reader.tensors:
        data = tensor.data
        writer.add_tensor_info(
            tensor.name, data.shape, data.dtype, data.nbytes, raw_dtype=tensor.tensor_type
        )
    total = max(1, sum(int(t.data.nbytes) for t in reader.tensors))
    written = 0
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            data = np.asarray(tensor.data)
            if tensor.name in permuted:
                data = np.ascontiguousarray(data[order[permuted[tensor.name]]])
            writer.write_tensor_data(data)
            written += int(data.nbytes)
            if on_progress is not None and on_progress(written / total) is False:
                raise ModelFileError(f"Reordering {src.name} was cancelled; nothing was kept.")
        writer.close()
        os.replace(partial, dst)
    except OSError as exc:
        raise ModelFileError(
            f"Could not write {dst.name}: {exc.strerror or exc}.",
            "Free some disk space, or move the models folder to a larger disk (Settings).",
        ) from exc
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return dst


def copy_field(writer: Any, key: str, field: Any) -> None:
    """Copy one metadata field of a GGUFReader into a GGUFWriter, types kept."""
    from gguf import GGUFValueType

    kind = field.types[0]
    sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
    writer.add_key_value(key, field.contents(), kind, sub)


def reorder_by_heat(
    src: str | Path, dst_dir: Path, on_progress: Callable[[float], bool] | None = None
) -> Path:
    """Write a copy of ``src`` into ``dst_dir`` with each layer's experts ordered by the heat
    counted for ``src`` (hottest first), and carry that heat over to the copy, in its order,
    so that the hot-experts engine can put each layer's first experts on the GPU as soon as
    the copy loads. Checks the disk first. Returns the copy's path.

    Raises:
        ModelFileError: no heat counted, not enough disk, or as ``reorder_experts``.
    """
    from engine.heat import HeatProfile, model_key

    src = Path(src)
    heat = HeatProfile.load(model_key(src))
    if heat is None or heat.total.sum() == 0:
        raise ModelFileError(
            f"No expert heat was counted for {src.name}.",
            "Turn counting on in View → Experts and chat for a while first.",
        )
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / f"{src.stem.removesuffix(BY_HEAT)}{BY_HEAT}.gguf"
    if dst.resolve() == src.resolve():
        raise ModelFileError(f"{src.name} is a reordered copy already.")
    needed = src.stat().st_size + DISK_SLACK
    free = shutil.disk_usage(dst_dir).free
    if free < needed:
        raise ModelFileError(
            f"Reordering {src.name} needs {format_bytes(needed)} free on the models disk; "
            f"{format_bytes(free)} is free.",
            "Free some disk space, or move the models folder to a larger disk (Settings).",
        )
    order = heat_order(heat.total)
    reorder_experts(src, dst, order, on_progress)
    heat.permuted(order, model_key(dst), dst.name).save()
    return dst


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
    dst: Path = args.out or src.with_name(f"{src.stem}{BY_HEAT}.gguf")
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
