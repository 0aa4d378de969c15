package module_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/net/http/httpproxy"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// kustomFlow makes the upstream behave like Kustom for a checkout and an
// order-management flow: create (201 + Location), read, acknowledge,
// capture (201 + Location + Capture-Id).
func kustomFlow(up *testupstream.Upstream) {
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		origin := "https://" + r.Host
		w.Header().Set("Klarna-Correlation-Id", "corr-"+r.Method)
		switch {
		case r.Method == "POST" && r.URL.Path == "/checkout/v3/orders":
			w.Header().Set("Location", origin+"/checkout/v3/orders/ord-1")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(201)
			_, _ = io.WriteString(w, `{"order_id":"ord-1","status":"checkout_incomplete"}`)
		case r.Method == "GET" && r.URL.Path == "/checkout/v3/orders/ord-1":
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"order_id":"ord-1","status":"checkout_complete"}`)
		case r.Method == "POST" && r.URL.Path == "/ordermanagement/v1/orders/ord-1/acknowledge":
			w.WriteHeader(204)
		case r.Method == "POST" && r.URL.Path == "/ordermanagement/v1/orders/ord-1/captures":
			w.Header().Set("Location", origin+"/ordermanagement/v1/orders/ord-1/captures/cap-1")
			w.Header().Set("Capture-Id", "cap-1")
			w.WriteHeader(201)
		default:
			w.WriteHeader(404)
		}
	})
}

// runKlarnaFlow is what a Klarna SDK does against base: create an order,
// follow its Location, acknowledge it and capture it. Every URL it follows
// must stay on base.
func runKlarnaFlow(t *testing.T, c *http.Client, base string) (protos []string) {
	t.Helper()
	step := func(method, url, body string, want int) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.SetBasicAuth(klarnaUser, klarnaPassword)
		req.Header.Set("Content-Type", "application/json")
		if method == "POST" && strings.Contains(url, "/ordermanagement/") {
			req.Header.Set("Klarna-Idempotency-Key", "idem-"+filepath.Base(url))
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s %s: status %d, want %d", method, url, resp.StatusCode, want)
		}
		if resp.Header.Get("Klarna-Correlation-Id") == "" {
			t.Errorf("%s %s: no Klarna-Correlation-Id", method, url)
		}
		protos = append(protos, resp.Proto)
		return resp
	}
	created := step("POST", base+"/checkout/v3/orders", `{"order_amount":100}`, 201)
	order := created.Header.Get("Location")
	if order != base+"/checkout/v3/orders/ord-1" {
		t.Fatalf("order Location %q, want it on %s", order, base)
	}
	step("GET", order, "", 200)
	step("POST", base+"/ordermanagement/v1/orders/ord-1/acknowledge", "", 204)
	capture := step("POST", base+"/ordermanagement/v1/orders/ord-1/captures", `{"captured_amount":100}`, 201)
	if loc := capture.Header.Get("Location"); loc != base+"/ordermanagement/v1/orders/ord-1/captures/cap-1" || capture.Header.Get("Capture-Id") != "cap-1" {
		t.Fatalf("capture Location %q Capture-Id %q", loc, capture.Header.Get("Capture-Id"))
	}
	return protos
}

// checkUpstreamFlow: the four calls reached Kustom's host with Kustom keys.
func checkUpstreamFlow(t *testing.T, up *testupstream.Upstream, kustomHost string) {
	t.Helper()
	reqs := up.Requests()
	if len(reqs) != 4 {
		t.Fatalf("upstream got %d requests, want 4", len(reqs))
	}
	for _, r := range reqs {
		if r.Host != kustomHost || r.ServerName != kustomHost || r.Header.Get("Authorization") != "Basic "+kustomKey {
			t.Errorf("%s %s reached Host %q SNI %q with %q", r.Method, r.Path, r.Host, r.ServerName, r.Header.Get("Authorization"))
		}
	}
}

// caddyRoot waits for Caddy's local CA and returns a pool with only its root.
func caddyRoot(t *testing.T, shim *shimtest.Shim) (*x509.CertPool, string) {
	t.Helper()
	rootFile := filepath.Join(shim.Dir, "pki", "authorities", "local", "root.crt")
	shimtest.WaitFor(t, "Caddy's local root", 15*time.Second, func() bool { _, err := os.Stat(rootFile); return err == nil })
	pem, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("bad root PEM")
	}
	return pool, rootFile
}

// TestHTTPSProxyInterception: a Go client configured through HTTPS_PROXY,
// trusting only Caddy's root, runs a checkout and an order-management flow
// against https://api.klarna.com, over HTTP/1.1 and HTTP/2 in the tunnel.
func TestHTTPSProxyInterception(t *testing.T) {
	e := startGateway(t, "")
	kustomFlow(e.up)
	pool, _ := caddyRoot(t, e.shim)
	t.Setenv("HTTPS_PROXY", e.base)
	t.Setenv("NO_PROXY", "")
	proxyFunc := httpproxy.FromEnvironment().ProxyFunc()
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) {
			e.up.Reset()
			tr := &http.Transport{
				Proxy:             func(r *http.Request) (*url.URL, error) { return proxyFunc(r.URL) },
				TLSClientConfig:   &tls.Config{RootCAs: pool},
				ForceAttemptHTTP2: h2,
			}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 20 * time.Second,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			var protos []string
			shimtest.WaitFor(t, "the intercepted host's certificate", 15*time.Second, func() bool {
				resp, err := c.Get("https://api.klarna.com/customer-token/v1/tokens/t0")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return true
			})
			e.up.Reset()
			protos = runKlarnaFlow(t, c, "https://api.klarna.com")
			want := "HTTP/1.1"
			if h2 {
				want = "HTTP/2.0"
			}
			for _, p := range protos {
				if p != want {
					t.Errorf("protocol in the tunnel %s, want %s", p, want)
				}
			}
			checkUpstreamFlow(t, e.up, "api.kustom.co")
		})
	}
}

// TestCurlThroughProxy: Debian's curl with -x, as PHP's curl would be set up.
func TestCurlThroughProxy(t *testing.T) {
	curl := shimtest.Tool(t, "curl", "curl")
	e := startGateway(t, "")
	kustomFlow(e.up)
	_, rootFile := caddyRoot(t, e.shim)
	for _, version := range []string{"--http1.1", "--http2"} {
		t.Run(version, func(t *testing.T) {
			var out []byte
			shimtest.WaitFor(t, "curl through the proxy", 15*time.Second, func() bool {
				e.up.Reset()
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				var err error
				out, err = exec.CommandContext(ctx, curl, "-sS", "-i", version, "-x", e.base, "--cacert", rootFile,
					"--noproxy", "", "-u", klarnaUser+":"+klarnaPassword, "-X", "POST", "-H", "Content-Type: application/json",
					"-d", `{"order_amount":100}`, "https://api.playground.klarna.com/checkout/v3/orders").CombinedOutput()
				return err == nil
			})
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(skipConnectResponse(string(out)))), nil)
			if err != nil {
				t.Fatalf("curl output: %v\n%s", err, out)
			}
			if resp.StatusCode != 201 || resp.Header.Get("Location") != "https://api.playground.klarna.com/checkout/v3/orders/ord-1" {
				t.Fatalf("status %d Location %q\n%s", resp.StatusCode, resp.Header.Get("Location"), out)
			}
			wantProto := map[string]int{"--http1.1": 1, "--http2": 2}[version]
			if resp.ProtoMajor != wantProto {
				t.Errorf("curl spoke HTTP/%d in the tunnel, want %d", resp.ProtoMajor, wantProto)
			}
			r := e.up.Requests()
			if len(r) != 1 || r[0].Host != "api.playground.kustom.co" || r[0].ServerName != "api.playground.kustom.co" ||
				r[0].Header.Get("Authorization") != "Basic "+kustomKey || string(r[0].Body) != `{"order_amount":100}` {
				t.Fatalf("upstream got %+v", r)
			}
		})
	}
}

// skipConnectResponse drops the proxy's "200 Connection established" block
// that curl -i prints before the real response, and writes curl's "HTTP/2"
// status line as the "HTTP/2.0" net/http parses.
func skipConnectResponse(out string) string {
	if strings.HasPrefix(out, "HTTP/1.1 200 Connection established") {
		if i := strings.Index(out, "\r\n\r\n"); i >= 0 {
			out = out[i+4:]
		}
	}
	if strings.HasPrefix(out, "HTTP/2 ") {
		out = "HTTP/2.0 " + out[len("HTTP/2 "):]
	}
	return out
}

// rawRequest sends one request line plus headers over a fresh connection and
// reads the response.
func rawRequest(t *testing.T, addr, requestLine string, headers ...string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg := requestLine + "\r\n" + strings.Join(headers, "\r\n")
	if len(headers) > 0 {
		msg += "\r\n"
	}
	if _, err := io.WriteString(conn, msg+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestGatewayRefusals: the shim tunnels nowhere and proxies to no host
// outside its map; each refusal says why and nothing is dialled.
func TestGatewayRefusals(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("gateway-pw"), bcrypt.MinCost)
	e := startGateway(t, fmt.Sprintf("proxy_auth apps %s", hash))
	addr := e.addr()

	// A listener standing for an internal service: nothing may reach it.
	internal, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer internal.Close()
	accepted := make(chan net.Addr) // the peer of each connection, in the order of the listen queue
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			c, err := internal.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- c.RemoteAddr():
			case <-done:
				return
			}
		}
	}()
	auth := "Proxy-Authorization: Basic " + base64Of("apps:gateway-pw")
	cases := []struct {
		name, line string
		headers    []string
		status     int
		reason     string
	}{
		{"CONNECT to a loopback address", "CONNECT " + internal.Addr().String() + " HTTP/1.1", []string{"Host: " + internal.Addr().String(), auth}, 403, "connect_refused"},
		{"CONNECT to a private address", "CONNECT 10.1.2.3:443 HTTP/1.1", []string{"Host: 10.1.2.3:443", auth}, 403, "connect_refused"},
		{"CONNECT to another host", "CONNECT example.com:443 HTTP/1.1", []string{"Host: example.com:443", auth}, 403, "connect_refused"},
		{"CONNECT to a non-API Klarna host", "CONNECT pay.klarna.com:443 HTTP/1.1", []string{"Host: pay.klarna.com:443", auth}, 403, "connect_refused"},
		{"CONNECT to an API host on another port", "CONNECT api.klarna.com:8443 HTTP/1.1", []string{"Host: api.klarna.com:8443", auth}, 403, "connect_refused"},
		{"CONNECT without proxy credentials", "CONNECT api.klarna.com:443 HTTP/1.1", []string{"Host: api.klarna.com:443"}, 407, "proxy_auth_required"},
		{"CONNECT with wrong proxy credentials", "CONNECT api.klarna.com:443 HTTP/1.1", []string{"Host: api.klarna.com:443", "Proxy-Authorization: Basic " + base64Of("apps:nope")}, 407, "proxy_auth_required"},
		{"proxy-form request for another host", "GET http://example.com/checkout/v3/orders/1 HTTP/1.1", []string{"Host: example.com", auth}, 403, "proxy_refused"},
		{"proxy-form request for an internal address", "GET http://" + internal.Addr().String() + "/checkout/v3/orders/1 HTTP/1.1", []string{"Host: " + internal.Addr().String(), auth}, 403, "proxy_refused"},
		{"origin-form request without proxy credentials", "GET /checkout/v3/orders/1 HTTP/1.1", []string{"Host: api.klarna.com"}, 407, "proxy_auth_required"},
		{"request for the shim itself with default_target none", "GET /checkout/v3/orders/1 HTTP/1.1", []string{"Host: 127.0.0.1", auth}, 421, "unknown_target"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.up.Reset()
			resp := rawRequest(t, addr, c.line, c.headers...)
			body, _ := io.ReadAll(resp.Body)
			checkRefusal(t, e.up, resp, body, c.status, c.reason)
			if c.status == 407 && resp.Header.Get("Proxy-Authenticate") == "" {
				t.Error("407 without Proxy-Authenticate")
			}
		})
	}

	// With the right proxy credentials, a proxy-form request for a mapped
	// host is served, and a CONNECT is established.
	resp := rawRequest(t, addr, "GET http://api.klarna.com/checkout/v3/orders/o1 HTTP/1.1",
		"Host: api.klarna.com", auth, "Authorization: Basic "+base64Of(klarnaUser+":"+klarnaPassword))
	if resp.StatusCode != 200 || len(e.up.Requests()) != 1 || e.up.Requests()[0].Host != "api.kustom.co" {
		t.Errorf("authorized proxy-form request: status %d, upstream %d", resp.StatusCode, len(e.up.Requests()))
	}
	resp = rawRequest(t, addr, "CONNECT api.klarna.com:443 HTTP/1.1", "Host: api.klarna.com:443", auth)
	if resp.StatusCode != 200 {
		t.Errorf("authorized CONNECT: status %d", resp.StatusCode)
	}

	// Nothing dialled the internal listener. A dial the shim made for a
	// request completed before it answered, so it is in the listen queue
	// ahead of this last connection of our own: every connection accepted
	// before ours counts, and once ours is accepted there is none left.
	probe, err := net.DialTimeout("tcp", internal.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	for dialled := 0; ; {
		select {
		case a := <-accepted:
			if a.String() != probe.LocalAddr().String() {
				dialled++
				continue
			}
			if dialled != 0 {
				t.Errorf("the internal listener was dialled %d times", dialled)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the internal listener never accepted our own connection")
		}
		break
	}
}

func base64Of(s string) string {
	req, _ := http.NewRequest("GET", "/", nil)
	user, pass, _ := strings.Cut(s, ":")
	req.SetBasicAuth(user, pass)
	return strings.TrimPrefix(req.Header.Get("Authorization"), "Basic ")
}

// TestConnectNotInterceptedByDefault: without intercept_connect every
// CONNECT is refused, even for an API host.
func TestConnectNotInterceptedByDefault(t *testing.T) {
	e := startSidecar(t, "")
	resp := rawRequest(t, e.addr(), "CONNECT api.klarna.com:443 HTTP/1.1", "Host: api.klarna.com:443")
	body, _ := io.ReadAll(resp.Body)
	checkRefusal(t, e.up, resp, body, 403, "connect_refused")
}

// TestMaxConcurrentPerCredential: past the limit a request gets 429 and
// never reaches Kustom; once the first finishes, the next goes through.
func TestMaxConcurrentPerCredential(t *testing.T) {
	e := startShim(t, shimOpts{cred: "limited", credOpts: "max_concurrent 1"})
	up, base := e.up, e.base
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	defer unblock() // a failed check must not leave the upstream handler waiting
	arrived := make(chan struct{}, 4)
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		if r.URL.Path == "/checkout/v3/orders/slow" {
			<-release
		}
		w.WriteHeader(200)
	})
	first := make(chan int, 1)
	go func() {
		first <- send(t, base, "GET", "/checkout/v3/orders/slow", "", klarnaUser, klarnaPassword)
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the first request never reached the upstream")
	}
	resp, raw := do(t, shimtest.Client(), "GET", base+"/checkout/v3/orders/fast", klarnaUser, klarnaPassword, "", nil)
	checkRefusal(t, nil, resp, raw, 429, "too_many_requests")
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("second request: 429 without Retry-After")
	}
	unblock()
	if got := <-first; got != 200 {
		t.Errorf("first request: %d", got)
	}
	if got := send(t, base, "GET", "/checkout/v3/orders/fast", "", klarnaUser, klarnaPassword); got != 200 {
		t.Errorf("after the first finished: %d", got)
	}
	if n := len(up.Requests()); n != 2 {
		t.Errorf("upstream got %d requests, want 2 (the refused one never reached it)", n)
	}
}
