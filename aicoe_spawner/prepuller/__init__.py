"""Catalog-aware image pre-pulling: keep the catalog's recommended digests on every user node.

``plan`` decides which images to keep (pure), ``daemonset`` turns them into the puller
DaemonSet's init containers (pure), ``controller`` follows the catalog and patches the
DaemonSet (I/O), ``app`` is the ``aicoe-image-puller`` command.
"""
