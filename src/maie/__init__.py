"""MAIE: the Modular Audio Intelligence Engine."""

import os

# pydantic looks for its plugins by reading every installed distribution's entry points when it builds
# its first model: 50-60 ms of every MAIE process's start (serve, each worker, each CLI command;
# measured), to find none. A deployment that uses a pydantic plugin sets PYDANTIC_DISABLE_PLUGINS itself
# ("" enables them all), and that value is kept.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

__version__ = "0.1.0"

__all__ = ["__version__"]
