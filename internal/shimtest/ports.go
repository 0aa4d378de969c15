package shimtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// Ports for configs that must name them.
//
// A plain Go server in a test is handed its listener open: it serves on what
// net.Listen("tcp", "127.0.0.1:0") returned, and no one else can take that
// port (testupstream does so, and so does Prometheus, started on port 0 and
// read back from its log). Caddy cannot be handed a listener like that. A
// Caddyfile names the port of each site and of the admin API, the tests send
// to that port and find it again in what the shim answers (Location
// headers, site addresses), and Caddy binds it itself when the config loads;
// a site on :0 would get some port, but the test could not learn which.
//
// Asking the kernel for a free port, closing it and writing it into the
// Caddyfile leaves a gap in which anything else may take the port: every
// httptest server, every upstream on :0 and every outgoing connection of
// every test process gets its port from that same ephemeral range. So:
//
//   - Port draws ports from below the kernel's ephemeral range
//     (net.ipv4.ip_local_port_range), where the kernel hands out none on its
//     own, from a random start in each test process and each at most once
//     per process, and only one that nothing listens on at that moment;
//   - [Shim.StartPorts] (and [StartProcess] for a kustom-shim process) loads
//     the config and, if Caddy could not bind a port because something took
//     it in between (another test process drawing from the same range),
//     loads it again on new ports and says which it got.
//
// An address where nothing may listen at all (an upstream that is down) is
// testupstream.Down's: a bound socket that never listens.

var portPool struct {
	once     sync.Once
	lo, size int
	next     atomic.Int64
}

// portRange is where Port draws from: below the ephemeral range (from 10000,
// above the well-known ports test tools default to), or above it, or, on a
// machine whose ephemeral range leaves no room, nowhere (size 0).
func portRange() (lo, size int) {
	ephLo, ephHi := 32768, 60999 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var l, h int
		if _, err := fmt.Sscan(string(b), &l, &h); err == nil && l > 0 && h >= l {
			ephLo, ephHi = l, h
		}
	}
	const floor, enough = 10000, 2000
	switch {
	case ephLo-floor >= enough:
		return floor, ephLo - floor
	case 65535-ephHi >= enough:
		return ephHi + 1, 65535 - ephHi
	}
	return 0, 0
}

// Port returns a TCP port for a Caddyfile to name: one nothing listens on
// now, outside the range the kernel gives out by itself, and not returned
// before in this process. Load configs that name it with [Shim.StartPorts],
// which moves to other ports if something took it before Caddy bound it.
func Port(t testing.TB) int {
	t.Helper()
	portPool.once.Do(func() {
		portPool.lo, portPool.size = portRange()
		if portPool.size > 0 {
			portPool.next.Store(int64(rand.IntN(portPool.size)))
		}
	})
	for i := 0; i < portPool.size; i++ {
		p := portPool.lo + int(portPool.next.Add(1)%int64(portPool.size))
		if l, err := net.Listen("tcp", fmt.Sprintf(":%d", p)); err == nil {
			l.Close()
			return p
		}
	}
	// No room outside the ephemeral range: the kernel's pick, with
	// StartPorts to retry when it is taken.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// AddrInUse tells whether err is a listener's "address already in use".
func AddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || err != nil && strings.Contains(err.Error(), "address already in use")
}

// portTries is how often a config is loaded on new ports before giving up.
const portTries = 5

// freshPorts returns ports with each 0 replaced by a port from Port.
func freshPorts(t testing.TB, ports []int) []int {
	out := make([]int, len(ports))
	for i, p := range ports {
		if p == 0 {
			p = Port(t)
		}
		out[i] = p
	}
	return out
}

// StartPorts is Start for a config that names len(ports) ports: it loads
// config(ports), with the ports given (each 0 replaced by one from Port), and
// if Caddy cannot bind one of them because something else holds it, loads
// config again on new ports from Port. It returns the ports the running
// config has. A test that restarts Caddy passes the ports it had, to keep
// them if they are still free.
func (s *Shim) StartPorts(t testing.TB, ports []int, config func(ports []int) string) []int {
	t.Helper()
	ports = freshPorts(t, ports)
	for try := 1; ; try++ {
		err := caddy.Load(Adapt(t, config(ports)), true)
		if err == nil {
			break
		}
		if !AddrInUse(err) || try == portTries {
			t.Fatalf("loading config: %v", err)
		}
		t.Logf("a port was taken before Caddy bound it (%v): loading the config on new ports", err)
		ports = freshPorts(t, make([]int, len(ports)))
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Logf("stopping caddy: %v", err)
		}
	})
	return ports
}

// StartPort is StartPorts for one port (0 for a new one).
func (s *Shim) StartPort(t testing.TB, port int, config func(port int) string) int {
	t.Helper()
	return s.StartPorts(t, []int{port}, func(p []int) string { return config(p[0]) })[0]
}
