"""The packaging helpers that every installer build relies on (the installers themselves are
built and started by packaging/smoke_test.sh in CI)."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType

import tomllib

ROOT = Path(__file__).parents[1]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "packaging" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_project_info_reads_version_and_engine_pin_from_pyproject() -> None:
    info = load("project_info")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert info.version() == project["version"]
    assert f"llama-cpp-python=={info.engine_version()}" in project["dependencies"]


def test_metainfo_has_a_release_for_the_current_version() -> None:
    info = load("project_info")
    metainfo = ROOT / "packaging" / "linux" / "io.github.moechat.MoEChat.metainfo.xml"
    assert f'<release version="{info.version()}"' in metainfo.read_text()


def test_icons_render_for_every_platform(qapp: object, tmp_path: Path) -> None:
    load("make_icons").main(tmp_path)
    for size in (16, 32, 48, 256, 512):
        png = (tmp_path / "hicolor" / f"{size}x{size}" / "apps" / "moe-chat.png").read_bytes()
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and (width, height) == (size, size)

    ico = (tmp_path / "moe-chat.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    assert (reserved, kind, count) == (0, 1, 7)
    for i in range(count):
        width, _, _, _, _, _, length, offset = struct.unpack(
            "<BBBBHHII", ico[6 + 16 * i : 22 + 16 * i]
        )
        assert ico[offset : offset + 8] == b"\x89PNG\r\n\x1a\n"
        assert offset + length <= len(ico)

    icns = (tmp_path / "moe-chat.icns").read_bytes()
    assert icns[:4] == b"icns" and struct.unpack(">I", icns[4:8])[0] == len(icns)
    kinds, at = [], 8
    while at < len(icns):
        kinds.append(icns[at : at + 4])
        at += struct.unpack(">I", icns[at + 4 : at + 8])[0]
    assert at == len(icns) and b"ic10" in kinds  # 1024 px, for Retina
