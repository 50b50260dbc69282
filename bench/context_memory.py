"""Benchmark: predicted context memory vs the engine's own dry run, every catalog model.

    .venv/bin/python bench/context_memory.py [--contexts 4096 32768 131072] [--markdown]

For each catalog model it writes a header-only GGUF of the model's real shape (a sparse
file: no weights, no disk; ``engine.synthetic.write_arch_header``), asks the engine for a
memory dry run (``no_alloc``, in a child process) at each context, and compares what the
engine would reserve (KV cache + recurrent state + compute buffers) with the planner's
prediction from that header (``ModelShape.from_gguf``) and from the catalog alone
(``ModelShape.from_catalog``, before download). Prints a table and the worst ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.catalog import CatalogModel, load_catalog
from engine.dryrun import dry_run
from engine.gguf_file import read_gguf
from engine.placement import Placement
from engine.planner import ModelShape, Settings, compute_buffer_bytes
from engine.synthetic import catalog_dims, write_arch_header

MIB = 2**20


@dataclass(frozen=True)
class Row:
    model: str
    architecture: str
    memory: str
    n_ctx: int
    dry_run: int  # KV + recurrent + compute, bytes
    predicted: int  # from the GGUF header
    from_catalog: int  # before download

    @property
    def ratio(self) -> float:
        return self.predicted / self.dry_run


def measure(model: CatalogModel, contexts: list[int], folder: Path) -> list[Row]:
    path = write_arch_header(
        folder / f"{model.id}.gguf", model.architecture, catalog_dims(model), model.id
    )
    shape = ModelShape.from_gguf(read_gguf(path))
    before = ModelShape.from_catalog(model, model.quants[0])
    rows = []
    for ctx in sorted({min(n, shape.context_length or n) for n in contexts}):
        report = dry_run(path, Placement.cpu_only(), ctx)
        engine = report.kv_total + report.recurrent_total + sum(report.compute_buffers.values())
        settings = Settings(n_ctx=ctx)
        rows.append(
            Row(
                model=model.id,
                architecture=model.architecture,
                memory=shape.memory.describe(),
                n_ctx=ctx,
                dry_run=engine,
                predicted=shape.kv_bytes(ctx) + compute_buffer_bytes(shape, settings),
                from_catalog=before.kv_bytes(ctx) + compute_buffer_bytes(before, settings),
            )
        )
    path.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768, 131072])
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in load_catalog():
            rows += measure(model, args.contexts, Path(tmp))
            for row in (r for r in rows if r.model == model.id):
                print(
                    f"{row.model:34s} {row.n_ctx:>7d}  dry run {row.dry_run / MIB:9.1f} MiB  "
                    f"predicted {row.predicted / MIB:9.1f} ({row.ratio:.3f})  "
                    f"catalog {row.from_catalog / MIB:9.1f} ({row.from_catalog / row.dry_run:.3f})",
                    flush=True,
                )
    worst = max(rows, key=lambda r: abs(r.ratio - 1))
    print(f"worst predicted/dry-run ratio: {worst.ratio:.3f} ({worst.model} at {worst.n_ctx})")
    if args.markdown:
        print("\n| model | architecture | context memory | context | dry run MiB | predicted MiB "
              "| ratio | from catalog MiB | ratio |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r.model} | {r.architecture} | {r.memory} | {r.n_ctx:,} | "
                  f"{r.dry_run / MIB:,.0f} | {r.predicted / MIB:,.0f} | {r.ratio:.3f} | "
                  f"{r.from_catalog / MIB:,.0f} | {r.from_catalog / r.dry_run:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
