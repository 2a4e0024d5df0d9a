"""Vendor wire formats, one module each. Each imports only clipgate's `canonical`, `errors` and
`adapter` modules: no web framework, no torch.

`PROTOCOLS` is the registry: one line per module in this package that defines `ADAPTER`.
"""

from importlib import import_module

from clipgate.adapter import Adapter

PROTOCOLS = (
    "sambastudio",
    "azureml",
    "roboflow",
    "openai",
    "cohere",
)

REGISTRY: dict[str, Adapter] = {
    adapter.name: adapter for adapter in (import_module(f"adapters.{module}").ADAPTER for module in PROTOCOLS)
}
