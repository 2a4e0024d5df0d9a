"""clipgate: one CLIP core behind the SambaStudio, Azure ML and Roboflow wire formats."""

__version__ = "0.1.0"
