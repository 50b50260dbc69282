"""Entry point of ``moe-chat``: the window, or ``--self-test`` without one."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
from importlib import resources
from types import TracebackType

from engine import package_version

log = logging.getLogger("moe_chat")
DESKTOP_ID = "io.github.moechat.MoEChat"  # packaging/linux/<id>.desktop


def _setup_logging() -> None:
    from engine.paths import log_dir

    handler = logging.handlers.RotatingFileHandler(
        log_dir() / "moe-chat.log", maxBytes=2_000_000, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _install_excepthook() -> None:
    """Unexpected exceptions are logged and shown in a dialog instead of killing the app."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        from app.errors import show_exception

        show_exception(value, tb)

    sys.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["serve"]:  # the API without a window: `moe-chat serve MODEL.gguf`
        from engine.server import serve_main

        return serve_main(args_in[1:])
    if args_in[:1] == ["worker"]:  # lend this computer to another: `moe-chat worker`
        from engine.rpc import worker_main

        return worker_main(args_in[1:])
    parser = argparse.ArgumentParser(
        prog="moe-chat",
        description="Chat with a local MoE model. `moe-chat serve --help`: the local API alone. "
        "`moe-chat worker --help`: lend this computer's memory to MoE Chat on another.",
    )
    parser.add_argument("--self-test", action="store_true", help="headless engine check, then exit")
    parser.add_argument(
        "--workers",
        default="",
        metavar="H:P[,H:P…]",
        help="with --self-test: also place layers on these computers (moe-chat worker)",
    )
    parser.add_argument("--version", action="version", version=f"moe-chat {package_version()}")
    parser.add_argument("model", nargs="?", help="a .gguf file to load at start")
    args, qt_args = parser.parse_known_args(argv)

    if args.self_test:
        from engine.selftest import run

        return run(workers=tuple(w.strip() for w in args.workers.split(",") if w.strip()))

    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from app.chat_window import ChatWindow
    from app.theme import THEME_KEY, apply_theme
    from engine.errors import MoeChatError
    from engine.library import Library
    from engine.store import Store

    _setup_logging()
    app = QApplication([sys.argv[0], *qt_args])
    app.setApplicationName("MoE Chat")
    app.setApplicationVersion(package_version())
    app.setDesktopFileName(DESKTOP_ID)  # ties the window to the installed desktop entry
    app.setWindowIcon(QIcon(str(resources.files("resources").joinpath("moe-chat.svg"))))
    _install_excepthook()
    try:
        store = Store()
        library = Library()
    except MoeChatError as exc:
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.critical(None, "MoE Chat cannot start", str(exc))
        return 1
    apply_theme(app, store.get_setting(THEME_KEY, "system"))
    window = ChatWindow(
        store, autoload=args.model is None, first_run_models=args.model is None, library=library
    )
    window.show()
    if args.model:
        window.load_model(args.model)
    code = app.exec()
    from PySide6.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(10_000)  # background probes still running
    store.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
