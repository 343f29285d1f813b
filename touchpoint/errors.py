"""The exception root of Touchpoint and its few specific classes.

Callers catch :class:`TouchpointError` to handle anything of ours; driver and
codec errors are translated into one of these ``from exc`` at the boundary
that meets them, so a traceback still shows the original cause.
"""


class TouchpointError(Exception):
    """Root of every error Touchpoint raises on purpose."""


class ConfigError(TouchpointError):
    """Settings are missing or inconsistent."""


class StackError(TouchpointError):
    """The local stack cannot be started, stopped or reached.

    The message names the missing piece (no Java, no Maven access, port
    taken, ...) so that a newcomer knows what to fix.
    """


class SerializationError(TouchpointError):
    """Bytes could not be encoded or decoded against the contract."""


class RegistryError(TouchpointError):
    """The schema registry refused a request or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PublishError(TouchpointError):
    """Kafka did not acknowledge an event in time (broker down or unreachable)."""
