"""The one error type of everything that finds, downloads, reads or loads a checkpoint."""

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """Any problem finding, downloading, reading or loading a checkpoint (one-line message)."""
