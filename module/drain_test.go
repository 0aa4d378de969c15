package module

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kustomshim/kustomshim/internal/testcerts"
)

// drainServer is a net/http server on loopback, as Caddy runs one, with or
// without kustom_drain on its listener. Like Caddy's, its socket has
// SO_REUSEPORT, so that a second server (a reloaded config) can listen on
// the same address while the first shuts down.
type drainServer struct {
	name  string
	srv   *http.Server
	addr  string
	calls atomic.Int32
	last  atomic.Pointer[drainConn] // the connection it last saw change state
	held  chan struct{}             // a /hold call has begun
	hold  chan struct{}             // and may answer
	mu    sync.Mutex
	paths []string // every path it answered
}

func startDrainServer(t *testing.T, name, addr string, drain bool) *drainServer {
	return startDrainServerIdle(t, name, addr, drain, 0, nil)
}

// startDrainServerIdle also sets the server's idle timeout and, with tlsCfg,
// serves HTTPS with the wrapper below TLS (before the tls placeholder).
func startDrainServerIdle(t *testing.T, name, addr string, drain bool, idle time.Duration, tlsCfg *tls.Config) *drainServer {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &drainServer{name: name, addr: ln.Addr().String(), held: make(chan struct{}, 1), hold: make(chan struct{})}
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		s.mu.Lock()
		s.paths = append(s.paths, r.URL.Path)
		s.mu.Unlock()
		switch r.URL.Path {
		case "/hold":
			s.held <- struct{}{}
			<-s.hold
		case "/duplex":
			// Answer, whole, then read the body (Caddy's
			// enable_full_duplex): nothing is written after the body.
			rc := http.NewResponseController(w)
			_ = rc.EnableFullDuplex()
			answer := s.name + " " + r.URL.Path
			w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
			_, _ = io.WriteString(w, answer)
			_ = rc.Flush()
			_, _ = io.Copy(io.Discard, r.Body)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, s.name+" "+r.URL.Path)
	}), IdleTimeout: idle}
	if drain {
		s.srv.ConnState = func(c net.Conn, st http.ConnState) {
			drainConnState(c, st)
			if dc, ok := c.(*drainConn); ok {
				s.last.Store(dc)
			}
		}
		ln = (&Drain{}).WrapListener(ln)
	}
	served := ln
	if tlsCfg != nil {
		served = tls.NewListener(ln, tlsCfg)
	}
	go func() { _ = s.srv.Serve(served) }()
	if drain {
		// Serving: a reload hands connections only to a listener whose
		// server takes them.
		dl := ln.(*drainListener)
		deadline := time.Now().Add(5 * time.Second)
		for !dl.serving.Load() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	t.Cleanup(func() { _ = s.srv.Close() })
	return s
}

// keptAlive is an app's kept-alive connection, driven byte by byte so that
// the test decides exactly when its next call is written.
type keptAlive struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialKeptAlive(t *testing.T, addr string) *keptAlive {
	t.Helper()
	c := dial(t, addr)
	return &keptAlive{conn: c, r: bufio.NewReader(c)}
}

// dial is a TCP connection to addr, closed after the test, that gives up
// after 10 s rather than hang it.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// call writes one order creation and reads its answer.
func (k *keptAlive) call(path string) (*http.Response, string, error) {
	body := `{"order_amount":100}`
	req := "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n" + body
	if _, err := io.WriteString(k.conn, req); err != nil {
		return nil, "", err
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// keptAliveAfterOneCall is an app that has made one call to a on the
// connection it keeps alive.
func keptAliveAfterOneCall(t *testing.T, a *drainServer, c net.Conn) *keptAlive {
	t.Helper()
	if c == nil {
		c = dial(t, a.addr)
	}
	k := &keptAlive{conn: c, r: bufio.NewReader(c)}
	if resp, body, err := k.call("/first"); err != nil || resp.StatusCode != 200 || resp.Close || body != "A /first" {
		t.Fatalf("first call: %v %v %q", resp, err, body)
	}
	return k
}

// shutdown stops a server as a reload or a stop does.
func shutdown(t *testing.T, s *drainServer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// testTLS is a server certificate for localhost and a pool that trusts it.
func testTLS(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	ca, err := testcerts.NewCA("drain test")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Leaf("localhost")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM())
	return &tls.Config{Certificates: []tls.Certificate{cert}}, pool
}

// reloadOnce is a reload as Caddy does one: the new config (B) listens on
// the address, then the old one (A) shuts down.
func reloadOnce(t *testing.T, a *drainServer, drain bool) *drainServer {
	t.Helper()
	b := startDrainServer(t, "B", a.addr, drain)
	shutdown(t, a)
	return b
}

// TestDrainHandsIdleConnectionsToTheNewConfig replays, deterministically,
// the call a reload loses: an app's next call, written on its kept-alive
// connection just after the old server began to shut down. Without
// kustom_drain the old server has closed the connection and the call is
// lost; with it the new config answers it, on the same connection, which
// stays alive for the calls after.
func TestDrainHandsIdleConnectionsToTheNewConfig(t *testing.T) {
	for _, drain := range []bool{false, true} {
		t.Run(map[bool]string{false: "caddy default", true: "kustom_drain"}[drain], func(t *testing.T) {
			a := startDrainServer(t, "A", "127.0.0.1:0", drain)
			k := keptAliveAfterOneCall(t, a, nil)
			b := reloadOnce(t, a, drain)

			resp, body, err := k.call("/second")
			if !drain {
				if err == nil {
					t.Fatalf("without kustom_drain the second call was answered (%d %q): the test no longer shows the loss", resp.StatusCode, body)
				}
				return
			}
			if err != nil {
				t.Fatalf("second call, written after the old server began to shut down: %v", err)
			}
			if resp.StatusCode != 200 || body != "B /second" || resp.Close {
				t.Errorf("second call: %d %q, Connection: close %v; want 200 from the new config, kept alive", resp.StatusCode, body, resp.Close)
			}
			if _, body, err := k.call("/third"); err != nil || body != "B /third" {
				t.Errorf("third call on the same connection: %q %v", body, err)
			}
			if a.calls.Load() != 1 || b.calls.Load() != 2 {
				t.Errorf("old config handled %d calls, new %d; want 1 and 2", a.calls.Load(), b.calls.Load())
			}
		})
	}
}

// TestDrainHandsOverACallBegunBeforeTheReload: the app has written half of
// its call when the reload begins, and the old server has read that half.
// The new config gets those bytes with the connection and answers the
// whole call; the old server never answers it.
func TestDrainHandsOverACallBegunBeforeTheReload(t *testing.T) {
	a := startDrainServer(t, "A", "127.0.0.1:0", true)
	k := keptAliveAfterOneCall(t, a, nil)
	call := "POST /second HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n" + `{"order_amount":100}`
	half := len(call) / 2
	if _, err := io.WriteString(k.conn, call[:half]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		dc := a.last.Load()
		dc.mu.Lock()
		n := len(dc.next)
		dc.mu.Unlock()
		if n == half {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old server read %d of the %d bytes written", n, half)
		}
		time.Sleep(time.Millisecond)
	}
	b := reloadOnce(t, a, true)
	if _, err := io.WriteString(k.conn, call[half:]); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		t.Fatalf("the call begun before the reload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "B /second" {
		t.Errorf("the call begun before the reload: %d %q, want 200 from the new config", resp.StatusCode, body)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 1 {
		t.Errorf("old config handled %d calls, new %d; want 1 and 1", a.calls.Load(), b.calls.Load())
	}
}

// TestDrainStopClosesAsBefore: with no new config on the address (a stop),
// an idle connection closes as it would without kustom_drain.
func TestDrainStopClosesAsBefore(t *testing.T) {
	a := startDrainServer(t, "A", "127.0.0.1:0", true)
	k := keptAliveAfterOneCall(t, a, nil)
	shutdown(t, a)
	if _, err := k.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection after a stop: read %v, want EOF", err)
	}
}

// TestDrainClosesAtOnceOutsideShutdown: while the server runs, the wrapper
// holds nothing back: an answer with Connection: close and an idle timeout
// close the connection at once.
func TestDrainClosesAtOnceOutsideShutdown(t *testing.T) {
	const soon = 5 * time.Second
	s := startDrainServerIdle(t, "A", "127.0.0.1:0", true, 200*time.Millisecond, nil)

	k := dialKeptAlive(t, s.addr)
	if _, err := io.WriteString(k.conn, "GET /bye HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil || !resp.Close {
		t.Fatalf("Connection: close call: %v %v", resp, err)
	}
	_, _ = io.ReadAll(resp.Body)
	start := time.Now()
	if _, err := k.r.ReadByte(); !errors.Is(err, io.EOF) || time.Since(start) > soon {
		t.Errorf("after Connection: close: %v after %v, want EOF at once", err, time.Since(start))
	}

	idle := dialKeptAlive(t, s.addr)
	if _, _, err := idle.call("/first"); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := idle.r.ReadByte(); !errors.Is(err, io.EOF) || time.Since(start) > soon {
		t.Errorf("after the idle timeout: %v after %v, want EOF after about 200ms", err, time.Since(start))
	}
}

// TestDrainPassesTLSConnections: placed after tls, the wrapper hands
// http.Server the *tls.Conn itself, which it needs for HTTPS and HTTP/2.
func TestDrainPassesTLSConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg, _ := testTLS(t)
	wrapped := (&Drain{}).WrapListener(tls.NewListener(ln, cfg))
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	c, err := wrapped.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*tls.Conn); !ok {
		t.Errorf("Accept returned %T, want *tls.Conn", c)
	}
}

// TestDrainLeavesTLSBelowAlone: placed before tls, the wrapper sees the raw
// bytes of a TLS connection, which are not a call it could hand over. The
// server reports the *tls.Conn, never the wrapper, so a reload closes such
// a connection as Caddy does, cleanly, and gives the new config nothing.
func TestDrainLeavesTLSBelowAlone(t *testing.T) {
	cfg, pool := testTLS(t)
	a := startDrainServerIdle(t, "A", "127.0.0.1:0", true, 0, cfg)
	k := keptAliveAfterOneCall(t, a, tls.Client(dial(t, a.addr), &tls.Config{RootCAs: pool, ServerName: "localhost"}))
	b := startDrainServerIdle(t, "B", a.addr, true, 0, cfg)
	shutdown(t, a)
	if _, err := k.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle TLS connection after the reload: read %v, want a clean EOF", err)
	}
	if b.calls.Load() != 0 {
		t.Errorf("the new config got %d calls from the old TLS connection", b.calls.Load())
	}
}

// waitReadingIdle waits until the server's goroutine for its last
// connection is between requests and waiting on the socket.
func waitReadingIdle(t *testing.T, s *drainServer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if dc := s.last.Load(); dc != nil {
			dc.mu.Lock()
			ok := dc.state == http.StateIdle && dc.reading
			dc.mu.Unlock()
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the server never waited for the next request")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestDrainKeepsReadAheadBytes: the app sends its next call's first half
// together with a call (pipelining), so the old server reads that half
// ahead into its buffer while it handles the first call, before it writes
// the answer. The new config must get those bytes too.
func TestDrainKeepsReadAheadBytes(t *testing.T) {
	a := startDrainServer(t, "A", "127.0.0.1:0", true)
	k := dialKeptAlive(t, a.addr)
	second := "POST /second HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20\r\n\r\n" + `{"order_amount":100}`
	half := len(second) / 2
	if _, err := io.WriteString(k.conn, "GET /hold HTTP/1.1\r\nHost: localhost\r\n\r\n"+second[:half]); err != nil {
		t.Fatal(err)
	}
	<-a.held
	close(a.hold)
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	waitReadingIdle(t, a)
	b := reloadOnce(t, a, true)
	if _, err := io.WriteString(k.conn, second[half:]); err != nil {
		t.Fatal(err)
	}
	resp, err = http.ReadResponse(k.r, nil)
	if err != nil {
		t.Fatalf("the call read ahead before the reload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "B /second" {
		t.Errorf("the call read ahead before the reload: %d %q, want 200 from the new config", resp.StatusCode, body)
	}
	if a.calls.Load() != 1 || b.calls.Load() != 1 {
		t.Errorf("old config handled %d calls, new %d; want 1 and 1", a.calls.Load(), b.calls.Load())
	}
}

// TestDrainFollowsBodiesReadAfterTheAnswer: with full duplex a handler may
// answer before it reads the body. Those body bytes come after the answer
// was written, and must still count as body: a body that looks like a
// request must never reach the new config as one.
func TestDrainFollowsBodiesReadAfterTheAnswer(t *testing.T) {
	a := startDrainServer(t, "A", "127.0.0.1:0", true)
	k := dialKeptAlive(t, a.addr)
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	if _, err := fmt.Fprintf(k.conn, "POST /duplex HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n", len(smuggled)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(k.conn, smuggled); err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	waitReadingIdle(t, a)
	b := reloadOnce(t, a, true)
	if resp, body, err := k.call("/second"); err != nil || resp.StatusCode != 200 || body != "B /second" {
		t.Fatalf("next call after the reload: %v %q %v", resp, body, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if slices.Contains(b.paths, "/smuggled") {
		t.Errorf("the new config served a request made of the old one's body: %q", b.paths)
	}
}

// TestDrainHandsOverManyConnections: a reload hands over every idle
// connection at once (Shutdown closes them in one loop); all of them reach
// the new config.
func TestDrainHandsOverManyConnections(t *testing.T) {
	const conns = 1000
	a := startDrainServer(t, "A", "127.0.0.1:0", true)
	ks := make([]*keptAlive, conns)
	for i := range ks {
		ks[i] = keptAliveAfterOneCall(t, a, nil)
	}
	b := reloadOnce(t, a, true)
	for i, k := range ks {
		if _, body, err := k.call("/second"); err != nil || body != "B /second" {
			t.Fatalf("connection %d of %d after the reload: %q %v", i+1, conns, body, err)
		}
	}
	if b.calls.Load() != conns {
		t.Errorf("the new config answered %d calls, want %d", b.calls.Load(), conns)
	}
}
