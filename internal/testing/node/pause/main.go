// Command pause is the sandbox ("pause") container of the real test node: it holds a pod's
// namespaces open until it is told to stop. Built here and pushed to the test registry, so the
// node pulls nothing from the internet.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// As pid 1 of the pod it also reaps zombies: children re-parented to it would otherwise
	// stay in the process table.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
