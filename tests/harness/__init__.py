"""What the tests run against, besides the control plane of ``aicoe_devcluster`` (started by
``tests/conftest.py``). Imported as ``harness.<module>``: ``tests/`` is on ``sys.path`` (pytest
puts the folder of the root ``conftest.py`` there; the benchmarks insert it themselves).

- :mod:`harness.builder`: the builder's environment: :class:`~harness.builder.BuilderEnv` (what
  each builder integration module's ``env`` fixture yields, by name), the builder service in
  process (``BuilderStack``) or as a process (``BuilderProcess``).
- :mod:`harness.git`: a Git server over HTTP on loopback, refs a repository does not publish,
  a listener that records what reaches it.
- :mod:`harness.registry`: Debian's docker-registry on loopback (and a token endpoint), base
  images pushed to it.
- :mod:`harness.jobs`: ``JobRunner``, the fast tier's stand-in for the Job controller (a pod
  per build Job, the Job's status from the pod's phase); it registers a host-process runtime
  with the fast tier's one kubelet (``aicoe_devcluster.kubelet.FakeKubelet``, the
  ``fake_kubelet`` fixture), which runs the pods' containers here and alone writes their
  status. ``start_pod``/``complete_job`` finish one build's Job by hand, where no ``JobRunner``
  runs, with the kubelet's status shapes.
- :mod:`harness.hub`: a real JupyterHub process (with configurable-http-proxy), a stand-in
  single-user server on the pods' podIP:port, an in-process spawner.
- :mod:`harness.node`: a control plane with a real node (kubelet, containerd) for the node tier.
- :mod:`harness.github_fake`: GitHub on loopback: its webhook payloads and a REST server checked
  against GitHub's REST description.
- :mod:`harness.browser`: Debian's chromium driven by playwright, logged-in pages, screenshots.
- :mod:`harness.helm_chart`: the Helm chart rendered and applied, raw authorization probes.
- :mod:`harness.kube`: small helpers: ImageStreams written, pods read, ``wait_for``.
"""
