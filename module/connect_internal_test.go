package module

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/kustomshim/kustomshim/internal/testcerts"
)

// tunnelBench runs serveTunnel over an in-memory connection with a plain
// handler standing for the Caddy server, so that a tunnel's lifecycle can be
// checked without a whole gateway.
type tunnelBench struct {
	c       *connectIntercept
	ca      *testcerts.CA
	release chan struct{} // a GET /slow waits for it
	entered chan struct{} // a GET /slow is in the handler
}

func newTunnelBench(t *testing.T) *tunnelBench {
	t.Helper()
	ca, err := testcerts.NewCA("tunnel lifecycle test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf("api.klarna.com")
	if err != nil {
		t.Fatal(err)
	}
	return &tunnelBench{ca: ca, release: make(chan struct{}), entered: make(chan struct{}, 1), c: &connectIntercept{
		tlsConfig: &tls.Config{Certificates: []tls.Certificate{leaf}, NextProtos: []string{"http/1.1"}},
		logger:    zap.NewNop(), tunnels: map[*http.Server]struct{}{}}}
}

// open starts a tunnel; done closes when serveTunnel returns.
func (b *tunnelBench) open(t *testing.T) (conn *tls.Conn, br *bufio.Reader, done chan struct{}) {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() { client.Close() })
	done = make(chan struct{})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			b.entered <- struct{}{}
			<-b.release
		}
		host, _ := tunnelHost(r)
		_, _ = io.WriteString(w, host)
	})
	go func() { b.c.serveTunnel(server, "api.klarna.com", handler); close(done) }()
	pool := x509.NewCertPool()
	pool.AddCert(b.ca.Cert)
	conn = tls.Client(client, &tls.Config{RootCAs: pool, ServerName: "api.klarna.com", NextProtos: []string{"http/1.1"}})
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, bufio.NewReader(conn), done
}

func get(conn *tls.Conn, br *bufio.Reader, path string) (*http.Response, string, error) {
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: api.klarna.com\r\n\r\n"); err != nil {
		return nil, "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, "", err
	}
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

func waitDone(t *testing.T, done chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: the tunnel is still served", what)
	}
}

// Closing a config's tunnels lets the call in flight finish (marked as the
// tunnel's), then ends the tunnel; a config that is closing opens no new
// one.
func TestTunnelCloseDrainsThenEnds(t *testing.T) {
	b := newTunnelBench(t)
	conn, br, done := b.open(t)
	if resp, body, err := get(conn, br, "/first"); err != nil || resp.StatusCode != 200 || body != "api.klarna.com" || resp.Close {
		t.Fatalf("first call: %v %q %v", resp, body, err)
	}
	type answer struct {
		resp *http.Response
		body string
		err  error
	}
	slow := make(chan answer, 1)
	go func() {
		resp, body, err := get(conn, br, "/slow")
		slow <- answer{resp, body, err}
	}()
	<-b.entered // the slow call is in the handler when the config closes
	b.c.close()
	close(b.release)
	a := <-slow
	if a.err != nil || a.resp.StatusCode != 200 || a.body != "api.klarna.com" {
		t.Fatalf("call in flight: %+v (want it answered)", a)
	}
	waitDone(t, done, "after close")
	if _, _, err := get(conn, br, "/after"); err == nil {
		t.Error("the tunnel still answered after its config closed")
	}
	// A tunnel opened on a closing config is ended after its handshake.
	conn2, br2, done2 := b.open(t)
	if _, _, err := get(conn2, br2, "/x"); err == nil {
		t.Error("a closing config served a new tunnel")
	}
	waitDone(t, done2, "a tunnel opened after close")
}

// A busy tunnel ends after tunnelMaxLifetime even though its idle timer
// keeps restarting.
func TestTunnelMaxLifetime(t *testing.T) {
	b := newTunnelBench(t)
	b.c.maxLifetime = 300 * time.Millisecond
	conn, br, done := b.open(t)
	start := time.Now()
	for time.Since(start) < 2*time.Second {
		resp, _, err := get(conn, br, "/busy")
		if err != nil || resp.Close {
			break // ended by the cap, between calls or with Connection: close
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitDone(t, done, "after the lifetime cap")
	if d := time.Since(start); d < b.c.maxLifetime || d > 2*time.Second {
		t.Errorf("the tunnel lived %v with a cap of %v", d, b.c.maxLifetime)
	}
}
