// Command lookup resolves each of its arguments with the pod's resolver (its /etc/resolv.conf,
// as kubelet wrote it) and prints one line per name: "name ip..." or "name error: ...". It is
// the real node's check that cluster DNS answers inside pods, small enough to build here.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The pure Go resolver reads /etc/resolv.conf (search domains, ndots) as glibc would.
	r := &net.Resolver{PreferGo: true}
	for _, name := range os.Args[1:] {
		addrs, err := r.LookupHost(ctx, name)
		if err != nil {
			fmt.Printf("%s error: %v\n", name, err)
			continue
		}
		fmt.Printf("%s %s\n", name, strings.Join(addrs, " "))
	}
}
