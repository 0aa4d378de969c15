package shimtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// TestPort: ports are handed out once each, outside the kernel's ephemeral
// range (when the machine leaves room for that), and free.
func TestPort(t *testing.T) {
	lo, size := portRange()
	seen := map[int]bool{}
	for i := 0; i < 50; i++ {
		p := Port(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if size > 0 && (p < lo || p >= lo+size) {
			t.Errorf("port %d outside [%d, %d)", p, lo, lo+size)
		}
		l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			t.Fatalf("port %d is not free: %v", p, err)
		}
		l.Close()
	}
}

// TestStartPortsMovesOnWhenTaken: a port something else took before Caddy
// bound it costs a retry on another port, not the test.
func TestStartPortsMovesOnWhenTaken(t *testing.T) {
	taken, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := taken.Addr().(*net.TCPAddr).Port
	s := New(t)
	var tried []int
	port := s.StartPort(t, busy, func(port int) string {
		tried = append(tried, port)
		return s.Globals("") + fmt.Sprintf("http://:%d {\n\trespond \"ok\"\n}\n", port)
	})
	if len(tried) != 2 || tried[0] != busy || port == busy || tried[1] != port {
		t.Fatalf("tried %v, runs on %d; want %d, then another", tried, port, busy)
	}
	resp, err := Client().Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Errorf("body %q", b)
	}
}

// TestDownRefusesAndHoldsItsPort: a down upstream refuses connections, and
// no one can listen on its port while the test runs.
func TestDownRefusesAndHoldsItsPort(t *testing.T) {
	down := testupstream.Down(t)
	if _, err := net.Dial("tcp", down.Addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dialling a down upstream: %v, want connection refused", err)
	}
	_, port, _ := net.SplitHostPort(down.Addr)
	for _, addr := range []string{down.Addr, ":" + port} {
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			t.Errorf("listening on %s succeeded: the port is not held", addr)
		} else if !AddrInUse(err) {
			t.Errorf("listening on %s: %v", addr, err)
		}
	}
	if _, err := http.Get("http://" + down.Addr); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("GET: %v", err)
	}
}
