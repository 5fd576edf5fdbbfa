"""derive's version, in a leaf module so that the CLI can print it without importing the package's API."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's [project] version
