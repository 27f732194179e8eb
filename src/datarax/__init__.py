"""datarax: a JAX-native data pipeline library built from Flax NNX modules."""

__version__ = "0.1.0"
