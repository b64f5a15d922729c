"""Errors that reach the user: each says what was wrong with which input and what to do."""


class TalkingFaceError(ValueError):
    """Bad input or a bad model file; the message is written for the person using the node."""


class ModelFileError(TalkingFaceError):
    """A model file is missing, corrupt, or not the kind the loader expects."""
