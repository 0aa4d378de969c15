// Package testupstream is a stand-in for the Kustom API in tests: a TLS
// server on loopback, with a certificate for the Kustom hosts signed by a
// throw-away CA, that records every request it receives exactly as it
// arrived (Host, TLS server name, credentials, headers, body bytes).
package testupstream

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kustomshim/kustomshim/internal/testcerts"
)

// Request is what the upstream received.
type Request struct {
	Method     string
	Host       string // Host header as received
	ServerName string // TLS SNI as received
	Path       string // URL path, undecoded form
	RawQuery   string
	Proto      string
	Header     http.Header
	Body       []byte
}

// Upstream is a recording TLS test server.
type Upstream struct {
	Server *httptest.Server
	Addr   string // 127.0.0.1:port
	CAFile string // PEM of the CA that signed the server's certificate

	mu       sync.Mutex
	requests []Request
	handler  http.HandlerFunc
}

// DefaultHosts are the names the test certificate covers.
var DefaultHosts = []string{"api.kustom.co", "api.playground.kustom.co", "api-na.kustom.co", "api.klarna.com", "localhost"}

// New starts an upstream whose certificate covers hosts (DefaultHosts when
// none are given). It answers 200 with a small JSON body until Handle is
// called, and closes when the test ends.
func New(t testing.TB, hosts ...string) *Upstream {
	t.Helper()
	if len(hosts) == 0 {
		hosts = DefaultHosts
	}
	ca, caFile := newCA(t)
	leaf, err := ca.Leaf(hosts...)
	if err != nil {
		t.Fatal(err)
	}
	u := &Upstream{CAFile: caFile}
	u.handler = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Klarna-Correlation-Id", "upstream-correlation-id")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}
	// httptest binds 127.0.0.1:0 and serves on that listener: the port is
	// the kernel's choice and never closed while the test runs.
	s := httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	s.EnableHTTP2 = true
	s.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	s.StartTLS()
	t.Cleanup(s.Close)
	u.Server = s
	u.Addr = s.Listener.Addr().String()
	return u
}

// Down returns an upstream that is not there, for "Kustom unreachable": its
// Addr is a loopback port held bound but not listening until the test ends,
// so that every dial is refused, and nothing else (another test's server, an
// outgoing connection) can take the port meanwhile, as it could a port that
// was closed (a stopped server's, or one that was free a moment ago). Its
// CAFile is a CA's like New's, so that a config trusting it loads; Server is
// nil, and it records nothing.
func Down(t testing.TB) *Upstream {
	t.Helper()
	_, caFile := newCA(t)
	return &Upstream{Addr: refusingAddr(t), CAFile: caFile}
}

func newCA(t testing.TB) (*testcerts.CA, string) {
	t.Helper()
	ca, err := testcerts.NewCA("kustom-shim test CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return ca, caFile
}

// Handle replaces the response behaviour. The request body has already been
// read and recorded; r.Body holds the same bytes again.
func (u *Upstream) Handle(f http.HandlerFunc) {
	u.mu.Lock()
	u.handler = f
	u.mu.Unlock()
}

// Requests returns what was received so far.
func (u *Upstream) Requests() []Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Request(nil), u.requests...)
}

// Reset forgets the recorded requests.
func (u *Upstream) Reset() {
	u.mu.Lock()
	u.requests = nil
	u.mu.Unlock()
}

func (u *Upstream) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := Request{
		Method: r.Method, Host: r.Host, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
		Proto: r.Proto, Header: r.Header.Clone(), Body: body,
	}
	if r.TLS != nil {
		rec.ServerName = r.TLS.ServerName
	}
	u.mu.Lock()
	u.requests = append(u.requests, rec)
	h := u.handler
	u.mu.Unlock()
	r.Body = io.NopCloser(&byteReader{b: body})
	h(w, r)
}

type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
