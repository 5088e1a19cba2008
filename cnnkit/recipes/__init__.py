"""The shipped training recipes, as YAML files (read by :mod:`cnnkit.engine.recipes`)."""
