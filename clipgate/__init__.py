"""clipgate: one CLIP core behind the SambaStudio, Azure ML, Roboflow, OpenAI and Cohere wire formats."""

__version__ = "0.1.0"
