//go:build tools

// Package tools pins the test node's NetworkPolicy agent (kube-network-policies, nftables and
// NFQUEUE based). tools/build.sh builds it from a copy of the module with aicoe.patch applied.
package tools

import (
	_ "sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)
