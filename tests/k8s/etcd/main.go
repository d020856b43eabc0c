// Command etcd is etcd's own server main, built from the Go module proxy at the version
// go.mod pins, for moim's test control plane (tests/k8s/build.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
