"""Every catalog architecture's test model: loads, streams, plans and places like a real one.

Each model is written by engine/synthetic.py with its family's real keys, tensor names and
special tokens, so the engine takes that family's code path (sliding windows and sinks for
gpt-oss, MLA for deepseek2, Mamba-2 for granitehybrid, short convolutions for lfm2moe…).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from engine.engine_log import per_device
from engine.gguf_file import Role, read_gguf
from engine.placement import EXPERT_TENSORS, expert_layers_pattern
from engine.session import LoadSettings, SamplingSettings, Session
from engine.synthetic import ARCHITECTURES, TEST_DIMS, build_arch_model

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("architectures")
    return {arch: build_arch_model(folder / f"{arch}.gguf", arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def cpu_replies(arch_models: dict[str, Path]) -> dict[str, tuple[str, str]]:
    replies = {}
    for arch, path in arch_models.items():
        with Session(path, settings=LoadSettings(n_ctx=1024)) as session:
            reply = session.chat(HELLO, SamplingSettings.greedy(16))
        replies[arch] = (reply.text, reply.reasoning)
    return replies


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_and_streams(arch: str, arch_models: dict[str, Path]) -> None:
    with Session(arch_models[arch], settings=LoadSettings(n_ctx=1024)) as session:
        assert session.info.architecture == arch
        pieces = list(session.stream(HELLO, SamplingSettings.greedy(16)))
        stats = session.last_stats
    assert stats.generated_tokens > 0 and pieces
    assert all("<|" not in piece.text for piece in pieces)  # no raw special-token markup


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_byte_roles_add_up_and_expert_patterns_match_the_family(
    arch: str, arch_models: dict[str, Path]
) -> None:
    info = read_gguf(arch_models[arch])
    dims = TEST_DIMS[arch]
    roles = info.bytes_by_role()
    assert sum(roles.values()) == info.tensor_bytes
    assert roles[Role.OTHER] == 0, [t.name for t in info.tensors if t.role is Role.OTHER]
    assert roles[Role.ROUTED_EXPERTS] > 0 and roles[Role.ROUTER] > 0
    assert info.n_layers == dims.n_layers and info.n_experts == dims.n_experts
    assert (roles[Role.SHARED_EXPERTS] > 0) == (dims.n_shared > 0)
    assert (roles[Role.UNUSED] > 0) == (dims.nextn_layers > 0)
    moe_layers = [i for i in range(dims.n_layers) if i >= dims.leading_dense]
    assert sorted(info.expert_bytes_by_layer()) == moe_layers
    names = [t.name for t in info.tensors]
    for layer in moe_layers:
        pattern = re.compile(expert_layers_pattern([layer]))
        placed = {n for n in names if pattern.search(n)}
        experts = {
            t.name for t in info.tensors if t.layer == layer and t.role is Role.ROUTED_EXPERTS
        }
        assert placed == experts and placed  # expert biases move with their experts
    assert all(re.search(EXPERT_TENSORS, n) for n in names if "_exps" in n)


@pytest.mark.rpc
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_planned_split_on_a_second_device_keeps_the_cpu_reply(
    arch: str,
    arch_models: dict[str, Path],
    cpu_replies: dict[str, tuple[str, str]],
    rpc_device: str,
) -> None:
    from engine.hardware import detect
    from engine.planner import ModelShape, Settings, Verdict, plan
    from tests.helpers.machines import gpu

    path = arch_models[arch]
    shape = ModelShape.from_gguf(read_gguf(path))
    n_moe = sum(1 for size in shape.expert_bytes_per_layer if size)
    # Half the expert layers on the device, the rest in RAM (its memory is the host's).
    settings = Settings(n_ctx=1024, use_mmap=False, gpu_expert_layers=n_moe // 2)
    machine = replace(
        detect(engine=False, measure_bandwidth=False), gpus=(gpu("RPC", 4.0, rpc_device),)
    )
    planned = plan(shape, machine, settings)
    assert planned.verdict is Verdict.HYBRID
    assert planned.gpu_expert_layers and planned.placement.rules

    with Session(path, planned.placement, LoadSettings(n_ctx=1024)) as session:
        reply = session.chat(HELLO, SamplingSettings.greedy(16))
        report = session.load_report
    assert (reply.text, reply.reasoning) == cpu_replies[arch]
    on_device = per_device(report.model_buffers).get(rpc_device, 0)
    gpu_plan = planned.devices[0]
    assert on_device == pytest.approx(gpu_plan.weights, rel=0.15, abs=2**20)


@pytest.mark.parametrize(
    ("arch", "reply_tokens"), [("granitehybrid", 16), ("lfm2moe", 16), ("gpt-oss", 1500)]
)
def test_what_cannot_go_back_goes_on_from_its_checkpoint(
    arch: str, reply_tokens: int, arch_models: dict[str, Path]
) -> None:
    """A Mamba or short-convolution state cannot go back a token, and gpt-oss's sliding-window
    layers keep only their window and a batch (768 cells here), so a Regenerate, a follow-up
    or an edited last message after a longer reply computed the whole conversation again. The
    checkpoints kept where a prompt's new tokens begin and before its last token let them
    compute only what is new, and reply the same."""
    greedy, long = SamplingSettings.greedy(16), SamplingSettings.greedy(reply_tokens)
    with Session(arch_models[arch], settings=LoadSettings(n_ctx=2048)) as session:
        first = session.chat(HELLO, long)
        assert first.stats.generated_tokens == reply_tokens
        again = session.chat(HELLO, greedy)  # Regenerate: back to before the last token
        assert again.stats.prompt_tokens_cached == again.stats.prompt_tokens - 1
        follow = [*HELLO, {"role": "assistant", "content": again.text}]
        reply = session.chat([*follow, {"role": "user", "content": "and then?"}], long)
        assert reply.stats.prompt_tokens_cached >= again.stats.prompt_tokens - 1
        assert reply.stats.generated_tokens == reply_tokens
        edited = [*follow, {"role": "user", "content": "and after that?"}]  # Edit, Send
        answer = session.chat(edited, greedy)
        assert answer.stats.prompt_tokens_cached >= again.stats.prompt_tokens - 1
        session.forget()
        fresh_again = session.chat(HELLO, greedy)
        session.forget()
        fresh_answer = session.chat(edited, greedy)
    assert fresh_answer.stats.prompt_tokens_cached == 0
    assert (again.text, answer.text) == (fresh_again.text, fresh_answer.text)
