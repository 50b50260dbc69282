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
    engine made them, and the weights' bytes per device."""
    import numpy as np

    from engine.native import llama_cpp
    from engine.session import SamplingSettings, Session

    ll = llama_cpp()
    with Session(model, placement) as session:
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


def planned(model: Path, gpu_free_gib: float) -> int:
    """``--plan``: the planner's hot-experts placement for a GPU (the RPC device) with this
    much free memory and routing that falls off as 1/(id+1), loaded; prints what was planned
    and what the engine placed on each device."""
    from dataclasses import replace

    import numpy as np

    from engine.devices import add_rpc_server
    from engine.hardware import detect
    from engine.planner import ModelShape, Settings, plan_hot_experts
    from tests.helpers.machines import gpu
    from tests.helpers.rpc_server import running_server

    info = read_gguf(model)
    shape = ModelShape.from_gguf(info)
    falling = 1000.0 / np.arange(1, info.n_experts + 1)
    counts = np.tile(falling, (info.n_layers, 1))
    with running_server() as endpoint:
        (device,) = add_rpc_server(endpoint)
        here = detect(engine=False, measure_bandwidth=False)
        machine = replace(here, gpus=(gpu("RPC test device", gpu_free_gib, device.name),))
        settings = Settings(n_ctx=512, gpu_margin=0)  # a test device: no driver to leave room for
        plan = plan_hot_experts(shape, machine, settings, counts)
        assert plan is not None, "no hot plan"
        result = probe(model, plan.placement)
        result["device"] = device.name
        result["planned"] = {d.device: d.weights for d in plan.devices}
        result["hot_experts"] = list(plan.placement.hot_experts)
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
