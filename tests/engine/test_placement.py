"""engine/placement.py: the coarse first-fit default split."""

from __future__ import annotations

from engine.placement import EXPERT_TENSORS, Placement, first_fit

GIB = 1 << 30


def fit(gpu_free: int | None, gpu: str | None = "CUDA0") -> Placement:
    # A 20 GiB MoE whose routed experts are 18 GiB, with a 1 GiB KV cache.
    return first_fit(20 * GIB, 18 * GIB, 1 * GIB, gpu, gpu_free)


def test_no_gpu_means_cpu_only() -> None:
    assert fit(None, gpu=None) == Placement.cpu_only()
    assert fit(None) == Placement.cpu_only()  # a GPU whose free memory is unknown


def test_everything_on_a_gpu_that_holds_it_with_margin() -> None:
    assert fit(22 * GIB) == Placement.all_on_gpu()
    assert fit(21 * GIB) != Placement.all_on_gpu()  # 21 GiB would leave no margin


def test_experts_stay_in_ram_when_only_the_rest_fits() -> None:
    placement = fit(8 * GIB)
    assert placement == Placement.experts_on_cpu()
    assert placement.n_gpu_layers == -1
    assert [(r.pattern, r.device) for r in placement.rules] == [(EXPERT_TENSORS, "CPU")]


def test_cpu_only_when_even_the_always_read_part_does_not_fit() -> None:
    assert fit(3 * GIB) == Placement.cpu_only()


def test_a_dense_model_is_never_split_by_experts() -> None:
    assert first_fit(10 * GIB, 0, GIB, "CUDA0", 8 * GIB) == Placement.cpu_only()
