// Command etcd is the etcd server, built from its published server module
// (the etcd repository's own main module cannot be built as a dependency).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
