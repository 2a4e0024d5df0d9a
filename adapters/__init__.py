"""Vendor wire formats, one module each; `REGISTRY` lists them. Each imports only clipgate's
`canonical`, `errors` and `adapter` modules: no web framework, no torch."""

from adapters import azureml, roboflow, sambastudio
from clipgate.adapter import Adapter

REGISTRY: dict[str, Adapter] = {a.name: a for a in (sambastudio.ADAPTER, azureml.ADAPTER, roboflow.ADAPTER)}
