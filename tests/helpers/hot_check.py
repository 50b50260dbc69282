"""One model loaded with hot-experts splits of several sizes, probed, for the tests of the
hot-experts engine (tests/engine/test_hot_experts.py).

``python -m tests.helpers.hot_check MODEL H [H…]``, with ``LLAMA_CPP_LIB_PATH`` set to the
variant's libraries, prints one JSON object per hot-set size: the hot tensors on a loopback
RPC device, the rest on this CPU (H = 0: nothing split, the unpatched path).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from engine.gguf_file import Role, read_gguf
from engine.placement import HOT_EXPERT_TENSORS, Placement, TensorRule

PROMPT = "hello world expert router token layer memory speed model chat reply local fast"
QUESTION = [{"role": "user", "content": "hello router"}]
ROUTED = re.compile(r"\.ffn_(gate_up|gate|up|down)_exps\.weight$")


def probe(model: Path, placement: Placement | None = None) -> dict[str, Any]:
    """The greedy reply's tokens, the logits after ``PROMPT``, the hot experts per layer as the
    engine made them, the weights' bytes per device, and the reply's routing (counted) with
    the share of it the reply's stats say the hot tensors served."""
    import numpy as np

    from engine.heat import HeatProfile
    from engine.native import llama_cpp
    from engine.session import SamplingSettings, Session

    ll = llama_cpp()
    with Session(model, placement) as session:
        info = session.info
        heat = HeatProfile(info.n_layers, info.n_experts, info.n_experts_used)
        session.set_heat(heat)
        session._decode(session.tokenize(PROMPT))
        logits = np.ctypeslib.as_array(
            ll.llama_get_logits_ith(session._ctx, -1), shape=(session.n_vocab,)
        ).copy()
        reply = session.chat(QUESTION, SamplingSettings.greedy(16))
        return {
            "tokens": session.tokenize(reply.text),
            "text": reply.text,
            "logits": [float(x) for x in logits],
            "hot": list(session.hot_experts),
            "weights": dict(session.load_report.model_buffers),
            "generation_counts": heat.counts["generation"].tolist(),
            "hot_read_share": reply.stats.hot_read_share,
            "generated": reply.stats.generated_tokens,
            "stop_reason": reply.stats.stop_reason,
        }


def hot_bytes(model: Path, counts: list[int]) -> int:
    """The bytes of each layer's first ``counts[layer]`` routed experts (up, gate, down)."""
    info = read_gguf(model)
    total = 0
    for tensor in info.tensors:
        routed = tensor.role is Role.ROUTED_EXPERTS and ROUTED.search(tensor.name)
        if routed and tensor.layer is not None:
            total += tensor.n_bytes // info.n_experts * counts[tensor.layer]
    return total


def planned(model: Path, room_gib: float) -> int:
    """``--plan``: what an automatic load does with heat counted for ``model`` (routing that
    falls off as 1/(id+1), in two halves) on a GPU (the RPC device) with ``room_gib`` free
    beyond the planner's margin, and RAM slow enough (2 GB/s) that expert reads dominate a
    token, as they do for a 30B model on a desktop: engine.tuner.choose asks the planner,
    which takes each layer's hottest experts for this engine; loaded, it prints what was
    planned and what the engine placed where."""
    from dataclasses import replace

    import numpy as np

    from engine.devices import add_rpc_server, engine_build
    from engine.hardware import detect
    from engine.heat import HeatProfile, model_key
    from engine.planner import GIB, GPU_USABLE_SHARE, Settings
    from engine.tuner import choose
    from tests.helpers.machines import gpu
    from tests.helpers.rpc_server import running_server

    info = read_gguf(model)
    heat = HeatProfile(info.n_layers, info.n_experts, info.n_experts_used, key=model_key(model))
    rng = np.random.default_rng(0)
    falling = 1.0 / np.arange(1, info.n_experts + 1)
    for _ in range(8):  # blocks of 256 tokens, so the held-out half has its own counts
        for layer in range(info.n_layers):
            ids = rng.choice(info.n_experts, size=256, p=falling / falling.sum())
            heat.add("generation", layer, ids, 256 if layer == 0 else 0)
    heat.save()
    free_gib = (Settings().gpu_margin / GIB + room_gib) / GPU_USABLE_SHARE
    with running_server() as endpoint:
        (device,) = add_rpc_server(endpoint)
        here = detect(engine=False, measure_bandwidth=False)
        machine = replace(
            here,
            gpus=(gpu("RPC test device", free_gib, device.name),),
            ram_bandwidth=2e9,
            splits_experts=engine_build().hot_experts,
        )
        choice = choose(info, 512, machine)
        result = probe(model, choice.placement)
        result["device"] = device.name
        result["planned"] = {d.device: d.weights for d in choice.plan.devices}
        result["hot_experts"] = list(choice.placement.hot_experts)
        result["hot_share"] = choice.plan.hot_share
        result["label"] = choice.placement.label
        print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str]) -> int:
    from engine.devices import add_rpc_server
    from tests.helpers.rpc_server import running_server

    if argv[0] == "--plan":
        return planned(Path(argv[1]), float(argv[2]))
    model, sizes = Path(argv[0]), [int(h) for h in argv[1:]]
    n_layers = read_gguf(model).n_layers
    with running_server() as endpoint:
        (device,) = add_rpc_server(endpoint)
        for h in sizes:
            placement = Placement(
                rules=(TensorRule(HOT_EXPERT_TENSORS, device.name),),
                use_mmap=False,
                hot_experts=(h,) * n_layers,
            )
            result = probe(model, placement)
            result["h"] = h
            result["device"] = device.name
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
