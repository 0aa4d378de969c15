//go:build unix

package testupstream

import (
	"net"
	"strconv"
	"syscall"
	"testing"
)

// refusingAddr binds a TCP socket to a loopback port the kernel picks and
// never listens on it: a connection to it is refused (RST), and as the
// socket sets no SO_REUSEADDR, nobody else can bind the port, nor does the
// kernel give it to an outgoing connection, until the test ends and it is
// closed.
func refusingAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}
