"""Domain exceptions. Each names the bad value and the fix; only the CLI and the
UI turn them into messages, so library callers can still catch them by type."""

from __future__ import annotations


class BaokanError(Exception):
    """Base of every error Baokan raises on purpose."""

    def __init__(self, message: str, fix: str = "") -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} {fix}".strip())


class ConfigError(BaokanError):
    """A setting has a value Baokan cannot use."""


class UnknownBackendError(ConfigError):
    """A registry was asked for a name it does not hold."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(
            f"Unknown {kind} {name!r}.",
            f"Valid {kind} names: {', '.join(self.valid)}.",
        )


class ParseError(BaokanError):
    """A file is not an archive article (the reason says why)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class QuestionError(BaokanError):
    """The question cannot be searched (empty, too long, no searchable text)."""


class FilterError(BaokanError):
    """A date or page filter is malformed or contradictory."""


class StoreError(BaokanError):
    """The vector store or keyword index cannot be reached or written."""


class LLMError(BaokanError):
    """The answer model failed (down, slow, rejected the key). Sources stay valid."""


class EmbedError(BaokanError):
    """The embedding workers failed (a worker died or could not load the model)."""
