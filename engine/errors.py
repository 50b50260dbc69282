"""Typed errors whose text is written for the person using the app."""

from __future__ import annotations


class MoeChatError(Exception):
    """Base of every error the engine raises on purpose.

    ``str(error)`` is a complete sentence for the user; ``hint`` says what to do next.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ModelFileError(MoeChatError):
    """A model file is missing, is not GGUF, is cut short, or holds an unsupported model."""


class ModelLoadError(MoeChatError):
    """The engine could not load a model that looked valid (memory, device, engine refusal)."""


class EngineUnavailableError(MoeChatError):
    """The native inference engine (llama-cpp-python) could not be imported."""


class GenerationError(MoeChatError):
    """A reply could not be produced (context full, engine failure)."""


class StoreError(MoeChatError):
    """Conversations or settings could not be read or written."""


def user_message(exc: BaseException) -> str:
    """The one sentence (plus what to do) a user sees for an error."""
    if isinstance(exc, MoeChatError):
        return str(exc)
    return f"Something unexpected went wrong: {type(exc).__name__}: {exc}"
