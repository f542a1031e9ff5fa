//go:build tools

// Package tools pins the test node's cluster DNS server (CoreDNS with its kubernetes plugin).
package tools

import (
	_ "github.com/coredns/coredns"
)
