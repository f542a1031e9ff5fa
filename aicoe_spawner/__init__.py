"""JupyterHub spawner with a live ImageStream catalog."""

__version__ = "0.1.0"
