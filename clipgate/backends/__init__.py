"""Encoders, one module per backend, chosen by `model.backend` (clipgate.engine.BACKENDS). The
only modules of clipgate that import a tensor library."""
