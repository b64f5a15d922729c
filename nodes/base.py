"""What every node of the pack shares: its menu category and errors that name the node."""
from __future__ import annotations

from typing import Any, ClassVar

from ..pipelines.errors import TalkingFaceError

ROOT_CATEGORY = "TalkingFace"


class NodeInputError(TalkingFaceError):
    """Bad input to a node; the message starts with the node's display name."""


class TalkingFaceNode:
    """Base of the pack's nodes. Subclasses implement ``run``; ComfyUI calls ``execute``, which
    re-raises the pipeline's user-facing errors prefixed with the node's name."""

    DISPLAY_NAME: ClassVar[str]
    FUNCTION = "execute"
    CATEGORY = ROOT_CATEGORY

    def execute(self, **inputs: Any) -> Any:
        try:
            return self.run(**inputs)
        except NodeInputError:
            raise
        except TalkingFaceError as error:
            raise NodeInputError(f"{self.DISPLAY_NAME}: {error}") from error

    def run(self, **inputs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def fail(cls, message: str) -> NodeInputError:
        return NodeInputError(f"{cls.DISPLAY_NAME}: {message}")
