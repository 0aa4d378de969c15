//go:build !unix

package testupstream

import (
	"net"
	"testing"
)

// refusingAddr, where a socket cannot be held bound without listening
// through package syscall, is a port that was free a moment ago: something
// else may take it before the test dials it.
func refusingAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
