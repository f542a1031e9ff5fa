"""JupyterHub spawner with a live ImageStream catalog."""
