"""A local Kubernetes control plane for tests and the demo: etcd + kube-apiserver built from
Go modules (tools/build.sh), the ImageStream CRD, a fake kubelet (notebook pods on paper, Job
pods' containers as processes here) and a namespace finalizer.
Not for production use."""

from .cluster import api_client, delete_namespace, install_crds, token_for_role
from .controlplane import ControlPlane, ControlPlaneError, write_kubeconfig
from .hostruntime import HostProcessRuntime
from .kubelet import BackgroundLoop, FakeKubelet

__all__ = [
    "BackgroundLoop",
    "ControlPlane",
    "ControlPlaneError",
    "FakeKubelet",
    "HostProcessRuntime",
    "api_client",
    "delete_namespace",
    "install_crds",
    "token_for_role",
    "write_kubeconfig",
]
