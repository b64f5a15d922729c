"""What every node of the pack shares: its menu category and errors that name the node."""
from __future__ import annotations

import hashlib
from typing import Any, ClassVar

from ..pipelines.errors import TalkingFaceError
from . import host

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

    @classmethod
    def check_model_file(cls, input_name: str, folder: str, name: str, obtain: str) -> bool | str:
        """For ``VALIDATE_INPUTS``: True when model file ``name`` is in ``folder``, else the message
        ComfyUI shows before anything runs: node, input, file, the folder it belongs in and ``obtain``
        (where the file comes from). Declaring the input in ``VALIDATE_INPUTS`` also tells ComfyUI not
        to refuse a name missing from the list with its bare "not in []"."""
        if host.find_model(folder, name) is not None:
            return True
        return f"{cls.DISPLAY_NAME}: {input_name}: {host.missing_model_message(folder, name)}. {obtain}"


class InputFileNode(TalkingFaceNode):
    """A node that reads the file its ``file`` input names from ComfyUI's input folder. It checks the
    name itself (so ComfyUI skips its list check): only files inside that folder are read."""

    @classmethod
    def IS_CHANGED(cls, file: str, **_: Any) -> str:  # ComfyUI passes every input
        try:
            return hashlib.sha256(host.input_file(file).read_bytes()).hexdigest()
        except TalkingFaceError:
            return ""  # VALIDATE_INPUTS reports it

    @classmethod
    def VALIDATE_INPUTS(cls, file: str) -> bool | str:
        try:
            host.input_file(file)
        except TalkingFaceError as error:
            return f"{cls.DISPLAY_NAME}: {error}"
        return True

