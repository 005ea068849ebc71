"""The errors the model library raises for bad input or a failed run.

Kept free of imports (no torch), so an entry point can catch them without loading the model.
"""


class CheckpointError(Exception):
    """A checkpoint folder or file is missing, truncated or inconsistent. One line naming it."""


class NonFiniteLoss(ValueError):
    """A loss that is NaN or infinite; the message says which stage, which step and what to do."""
