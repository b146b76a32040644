//go:build tools

// Package tools pins etcd's server command (package main at the root of
// go.etcd.io/etcd/server/v3) so that `go mod tidy` keeps its dependencies.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
