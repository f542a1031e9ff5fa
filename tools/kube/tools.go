//go:build tools

// Package tools pins the test cluster's Kubernetes binaries: the control plane
// (kube-apiserver) and the real node (kubelet, kube-scheduler, kube-controller-manager,
// kube-proxy for Service routing).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
