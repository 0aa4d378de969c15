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
	dl    *drainListener // its kustom_drain listener, if any
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
	return startDrainServerWith(t, name, addr, drain, drainServerOpts{idle: idle, tls: tlsCfg})
}

type drainServerOpts struct {
	idle  time.Duration
	tls   *tls.Config // serve HTTPS, with the wrapper below TLS
	h2c   bool        // also serve HTTP/2 with prior knowledge, as Caddy does with h2c
	onNew func()      // called as the server accepts each connection, in its accept loop
}

func startDrainServerWith(t *testing.T, name, addr string, drain bool, opts drainServerOpts) *drainServer {
	t.Helper()
	idle, tlsCfg := opts.idle, opts.tls
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
	if opts.h2c {
		s.srv.Protocols = new(http.Protocols)
		s.srv.Protocols.SetHTTP1(true)
		s.srv.Protocols.SetUnencryptedHTTP2(true)
	}
	if drain {
		s.srv.ConnState = func(c net.Conn, st http.ConnState) {
			drainConnState(c, st)
			if dc, ok := c.(*drainConn); ok {
				s.last.Store(dc)
			}
			if st == http.StateNew && opts.onNew != nil {
				opts.onNew()
			}
		}
		ln = (&Drain{}).WrapListener(ln)
		s.dl = ln.(*drainListener)
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

// orderCreation is the bytes of one order creation, a POST.
func orderCreation(path string) string {
	return "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n" + `{"order_amount":100}`
}

// call writes one order creation and reads its answer.
func (k *keptAlive) call(path string) (*http.Response, string, error) {
	return k.send(orderCreation(path))
}

// send writes the bytes of a call and reads its answer.
func (k *keptAlive) send(req string) (*http.Response, string, error) {
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

// waitNext waits until the server's goroutine for its last connection is
// between requests, waiting on the socket, having read next of the next
// call.
func waitNext(t *testing.T, s *drainServer, next string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if dc := s.last.Load(); dc != nil {
			dc.mu.Lock()
			ok := dc.state == http.StateIdle && dc.reading && string(dc.next) == next
			dc.mu.Unlock()
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server never waited for the next request, having read %q of it", next)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestDrainDropsTheCRLFAfterAPOST: some clients send an extra CRLF after a
// POST's body, and net/http's server drops up to four CR/LF before the
// request that follows a POST. The new config sees a handed-over
// connection as fresh and would read them as a malformed request: a 400,
// a final answer, where a closed connection would have let the client
// retry. Wherever the CR/LF fall (read by the old server before the
// reload, or written after it), the new config answers the next call.
func TestDrainDropsTheCRLFAfterAPOST(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after string // after the first call's body: read by the old server, written after the reload
	}{
		{"with the body", "\r\n", ""},
		{"split by the reload", "\r", "\n"},
		{"four, split", "\r\n\r", "\n"},
		{"after the reload", "", "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startDrainServer(t, "A", "127.0.0.1:0", true)
			k := dialKeptAlive(t, a.addr)
			if resp, body, err := k.send(orderCreation("/first") + tc.before); err != nil || resp.StatusCode != 200 || body != "A /first" {
				t.Fatalf("first call: %v %q %v", resp, body, err)
			}
			waitNext(t, a, tc.before)
			b := reloadOnce(t, a, true)
			resp, body, err := k.send(tc.after + orderCreation("/second"))
			if err != nil {
				t.Fatalf("second call: %v", err)
			}
			if resp.StatusCode != 200 || body != "B /second" {
				t.Errorf("second call, after %q: %d %q; want 200 from the new config", tc.before+tc.after, resp.StatusCode, body)
			}
			if b.calls.Load() != 1 {
				t.Errorf("the new config handled %d calls, want 1", b.calls.Load())
			}
		})
	}
}

// TestDrainClosesOnTheHTTP2PrefaceMidHTTP1: an app that sends the HTTP/2
// preface on a connection it has used for HTTP/1.1 would be switched to
// HTTP/2 by a new config with h2c, which sees the connection as fresh;
// the old server reads the preface as an HTTP/1 request instead. Such a
// connection is closed, as a reload closes it without kustom_drain, and
// the new config writes nothing on it: wherever the reload falls in the
// preface, and also after a POST's extra CRLF, which the old server drops.
func TestDrainClosesOnTheHTTP2PrefaceMidHTTP1(t *testing.T) {
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	for _, tc := range []struct {
		name, crlf string
		before     int // bytes of the preface the old server reads before the reload
	}{
		{"first line read", "", len("PRI * HTTP/2.0\r\n")},
		{"two bytes read", "", 2},
		{"sent after the reload", "", 0},
		{"after a CRLF", "\r\n", len("PRI * HTTP/2.0\r\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startDrainServerWith(t, "A", "127.0.0.1:0", true, drainServerOpts{h2c: true})
			k := keptAliveAfterOneCall(t, a, nil)
			if _, err := io.WriteString(k.conn, tc.crlf+preface[:tc.before]); err != nil {
				t.Fatal(err)
			}
			waitNext(t, a, tc.crlf+preface[:tc.before])
			b := startDrainServerWith(t, "B", a.addr, true, drainServerOpts{h2c: true})
			shutdown(t, a)
			_, _ = io.WriteString(k.conn, preface[tc.before:]) // the connection may be closed already
			got, err := io.ReadAll(k.r)
			if len(got) > 0 {
				t.Errorf("after the HTTP/2 preface, mid-HTTP/1.1, the connection got %q; want it closed without an answer", got)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("the connection stayed open: %v", err)
			}
			if b.calls.Load() != 0 {
				t.Errorf("the new config served %d calls on it", b.calls.Load())
			}
		})
	}
}

// blockFirstAccept makes a server's accept loop wait, as it takes its
// first connection, until release is called: the connections handed over
// after it stay queued, and that one is not yet read.
func blockFirstAccept() (opts drainServerOpts, accepted <-chan struct{}, release func()) {
	took, free := make(chan struct{}), make(chan struct{})
	var first, freed sync.Once
	opts.onNew = func() {
		first.Do(func() {
			close(took)
			<-free
		})
	}
	return opts, took, func() { freed.Do(func() { close(free) }) }
}

// shutdownAsync starts a server's shutdown, as a reload does, and returns
// once its listener is closing; wait waits for the shutdown to end.
func shutdownAsync(t *testing.T, s *drainServer) (wait func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- s.srv.Shutdown(ctx)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !s.dl.closing.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the server never closed its listener")
		}
		time.Sleep(time.Millisecond)
	}
	return func() {
		t.Helper()
		if err := <-done; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}
}

// TestDrainHandsOverConnectionsStillQueuedAtClose: two reloads close
// together (A to B, then B to C) while B's server has not yet accepted
// every connection A handed it. Those still in B's queue when B's
// listener closes go on to C; closing them would lose the next call of
// each. The one B's server took but had not read goes on to C too.
func TestDrainHandsOverConnectionsStillQueuedAtClose(t *testing.T) {
	a := startDrainServer(t, "A", "127.0.0.1:0", true)
	ks := []*keptAlive{keptAliveAfterOneCall(t, a, nil), keptAliveAfterOneCall(t, a, nil)}
	opts, accepted, release := blockFirstAccept()
	defer release()
	b := startDrainServerWith(t, "B", a.addr, true, opts)
	shutdown(t, a)
	<-accepted
	// A's Shutdown may return before its reads, woken, finish their
	// hand-overs.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.dl.qmu.Lock()
		queued := len(b.dl.queue)
		b.dl.qmu.Unlock()
		if queued == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections queued on B, want 1", queued)
		}
		time.Sleep(time.Millisecond)
	}
	c := startDrainServer(t, "C", a.addr, true)
	wait := shutdownAsync(t, b)
	release()
	wait()
	for i, k := range ks {
		if _, body, err := k.call("/second"); err != nil || body != "C /second" {
			t.Errorf("connection %d after two reloads: %q %v; want C's answer", i+1, body, err)
		}
	}
	if b.calls.Load() != 0 || c.calls.Load() != 2 {
		t.Errorf("B handled %d calls, C %d; want 0 and 2", b.calls.Load(), c.calls.Load())
	}
}

// TestDrainHandsOverPendingCallsOfAConfigShuttingDown: a connection comes
// to B with a whole call the old server had read (it read the call just as
// its shutdown began, before it saw the request), and B's server takes it
// only once B itself is shutting down. B's server would read that call
// from the pending bytes and drop it unanswered, as a server drops any
// request it reads during its shutdown; instead the connection, pending
// call included, goes on to C, which answers it.
func TestDrainHandsOverPendingCallsOfAConfigShuttingDown(t *testing.T) {
	opts, accepted, release := blockFirstAccept()
	defer release()
	b := startDrainServerWith(t, "B", "127.0.0.1:0", true, opts)
	app, old := tcpPair(t)
	// The hand-over from the old config, as transfer does it: the call
	// was read, whole, by a server that had served one before.
	(&drainConn{Conn: old, ln: &drainListener{key: b.dl.key}, state: http.StateIdle, served: true,
		next: []byte(orderCreation("/second"))}).transfer()
	<-accepted
	c := startDrainServer(t, "C", b.addr, true)
	wait := shutdownAsync(t, b)
	release()
	wait()
	resp, err := http.ReadResponse(bufio.NewReader(app), nil)
	if err != nil {
		t.Fatalf("the call handed over to B as B shut down: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "C /second" {
		t.Errorf("the call handed over to B as B shut down: %d %q; want C's answer", resp.StatusCode, body)
	}
	if b.calls.Load() != 0 || c.calls.Load() != 1 {
		t.Errorf("B handled %d calls, C %d; want 0 and 1", b.calls.Load(), c.calls.Load())
	}
}

// tcpPair is the two ends of a loopback TCP connection: the app's, and
// the server's.
func tcpPair(t *testing.T) (app, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	app = dial(t, ln.Addr().String())
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return app, server
}
