package module_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
	"github.com/kustomshim/kustomshim/module"
)

// gatewayOpts is a gateway (intercept_connect, no default target) with a
// status page and metrics, shop1, and extra kustom options.
func gatewayOpts(up *testupstream.Upstream, extra string) shimOpts {
	return shimOpts{up: up, gateway: true, status: true, metrics: true, more: extra}
}

// tunnel is one CONNECT tunnel with TLS to the shim's interception
// certificate, on which requests are written by hand, so that a test knows
// exactly which connection carries them.
type tunnel struct {
	conn *tls.Conn
	br   *bufio.Reader
}

func openTunnel(t *testing.T, addr, host string, pool *x509.CertPool, headers ...string) *tunnel {
	t.Helper()
	tn, err := tryTunnel(addr, host, pool, headers...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.conn.Close() })
	return tn
}

func tryTunnel(addr, host string, pool *x509.CertPool, headers ...string) (*tunnel, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = raw.SetDeadline(time.Now().Add(20 * time.Second))
	msg := "CONNECT " + host + ":443 HTTP/1.1\r\nHost: " + host + ":443\r\n"
	for _, h := range headers {
		msg += h + "\r\n"
	}
	if _, err := io.WriteString(raw, msg+"\r\n"); err != nil {
		raw.Close()
		return nil, err
	}
	br := bufio.NewReader(raw)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		raw.Close()
		return nil, fmt.Errorf("CONNECT: %v %v", resp, err)
	}
	conn := tls.Client(&prefixedConn{Conn: raw, r: br}, &tls.Config{RootCAs: pool, ServerName: host, NextProtos: []string{"http/1.1"}})
	if err := conn.Handshake(); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS in the tunnel: %v", err)
	}
	return &tunnel{conn: conn, br: bufio.NewReader(conn)}, nil
}

// waitForInterception waits until Caddy has issued the tunnel certificate.
func waitForInterception(t *testing.T, addr string, pool *x509.CertPool, headers ...string) {
	t.Helper()
	shimtest.WaitFor(t, "the interception certificate", 15*time.Second, func() bool {
		tn, err := tryTunnel(addr, "api.klarna.com", pool, headers...)
		if err == nil {
			tn.conn.Close()
		}
		return err == nil
	})
}

type prefixedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *prefixedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// do writes one request in the tunnel and reads its answer; err is the
// connection's, for a tunnel the shim closed.
func (tn *tunnel) do(method, path, host string, headers ...string) (*http.Response, []byte, error) {
	msg := method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\n"
	for _, h := range headers {
		msg += h + "\r\n"
	}
	if _, err := io.WriteString(tn.conn, msg+"\r\n"); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(tn.br, nil)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body, err
}

var klarnaBasic = "Authorization: Basic " + base64Of(klarnaUser+":"+klarnaPassword)

// A tunnel opened before a reload is served by the config that opened it.
// The reload ends it (the call in flight finishes), so that a credential the
// new config removed never reaches Kustom again, and the calls it still
// finishes are recorded where the new config reads.
func TestTunnelEndsWithItsConfig(t *testing.T) {
	up := testupstream.New(t)
	release := make(chan struct{})
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/slow") {
			<-release
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"order_id":"o"}`)
	})
	gw := gatewayOpts(up, "")
	noShop1 := gw
	noShop1.noCred = true
	e := startShim(t, gw)
	addr := e.addr()
	pool, _ := caddyRoot(t, e.shim)
	waitForInterception(t, addr, pool)

	t.Run("a removed credential never reaches Kustom through an old tunnel", func(t *testing.T) {
		tn := openTunnel(t, addr, "api.klarna.com", pool)
		resp, _, err := tn.do("GET", "/checkout/v3/orders/o1", "api.klarna.com", klarnaBasic)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("before the reload: %v %v", resp, err)
		}
		up.Reset()
		e.reload(t, noShop1) // shop1 removed
		resp, body, err := tn.do("GET", "/checkout/v3/orders/o2", "api.klarna.com", klarnaBasic)
		if err == nil && resp.StatusCode == 200 {
			t.Errorf("the old tunnel still served a call with the removed credential: %s", body)
		}
		for _, r := range up.Requests() {
			if r.Header.Get("Authorization") == "Basic "+kustomKey {
				t.Errorf("%s %s reached Kustom with the removed credential's key", r.Method, r.Path)
			}
		}
		// A new tunnel meets the new config (once the new config serves the
		// interception certificate).
		waitForInterception(t, addr, pool)
		resp, body, err = openTunnel(t, addr, "api.klarna.com", pool).do("GET", "/checkout/v3/orders/o3", "api.klarna.com", klarnaBasic)
		if err != nil {
			t.Fatalf("new tunnel after the reload: %v", err)
		}
		checkRefusal(t, up, resp, body, 401, "unknown_username")
	})

	t.Run("the call in flight finishes and is recorded", func(t *testing.T) {
		e.reload(t, gw)
		waitForInterception(t, addr, pool)
		tn := openTunnel(t, addr, "api.klarna.com", pool)
		type result struct {
			resp *http.Response
			err  error
		}
		done := make(chan result, 1)
		go func() {
			resp, _, err := tn.do("GET", "/checkout/v3/orders/slow", "api.klarna.com", klarnaBasic, "User-Agent: slow-app/1")
			done <- result{resp, err}
		}()
		shimtest.WaitFor(t, "the slow call to reach the upstream", 10*time.Second, func() bool {
			for _, r := range up.Requests() {
				if strings.HasSuffix(r.Path, "/slow") {
					return true
				}
			}
			return false
		})
		e.reload(t, gw) // a reload while the call is in flight
		close(release)
		var res result
		select {
		case res = <-done:
		case <-time.After(15 * time.Second):
			t.Fatal("the call in flight never finished")
		}
		if res.err != nil || res.resp.StatusCode != 200 {
			t.Fatalf("in-flight call: %+v (want it answered across the reload)", res)
		}
		// The new config's status shows the call the old one finished.
		doc := getStatusJSON(t, fmt.Sprintf("http://%s/kustom/status", addr), nil)
		found := false
		for _, r := range doc.Services {
			for _, c := range r.Clients {
				found = found || (c == "slow-app/1" && r.LastOK != nil && r.State == "klarna_host")
			}
		}
		if !found {
			t.Errorf("the finished call is not in the status: %+v", doc.Services)
		}
	})
}

// Refusals the review found missing; each says why, with a correlation id,
// counts in the metrics, and never reaches the upstream.
func TestFailClosedRefusals(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("gateway-pw"), bcrypt.MinCost)
	e := startShim(t, gatewayOpts(nil, fmt.Sprintf("proxy_auth apps %s\n", hash)))
	up, addr := e.up, e.addr()
	pool, _ := caddyRoot(t, e.shim)
	proxyAuth := "Proxy-Authorization: Basic " + base64Of("apps:gateway-pw")
	waitForInterception(t, addr, pool, proxyAuth)

	t.Run("origin-form request without proxy_auth", func(t *testing.T) {
		up.Reset()
		resp := rawRequest(t, addr, "GET /checkout/v3/orders/x HTTP/1.1", "Host: api.klarna.com", klarnaBasic)
		body, _ := io.ReadAll(resp.Body)
		checkRefusal(t, up, resp, body, 407, "proxy_auth_required")
		// With it, served.
		resp = rawRequest(t, addr, "GET /checkout/v3/orders/x HTTP/1.1", "Host: api.klarna.com", klarnaBasic, proxyAuth)
		if resp.StatusCode != 200 || len(up.Requests()) != 1 {
			t.Errorf("with proxy_auth: %d, upstream %d", resp.StatusCode, len(up.Requests()))
		}
	})
	t.Run("Upgrade", func(t *testing.T) {
		for _, up2 := range []string{"websocket", "h2c"} {
			up.Reset()
			resp := rawRequest(t, addr, "GET /checkout/v3/orders/x HTTP/1.1", "Host: api.klarna.com", klarnaBasic, proxyAuth,
				"Connection: Upgrade", "Upgrade: "+up2, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13")
			body, _ := io.ReadAll(resp.Body)
			checkRefusal(t, up, resp, body, 400, "upgrade_refused")
		}
	})
	tn := openTunnel(t, addr, "api.klarna.com", pool, proxyAuth)
	t.Run("CONNECT inside a tunnel", func(t *testing.T) {
		up.Reset()
		resp, body, err := tn.do("CONNECT", "api.kustom.co:443", "api.kustom.co:443")
		if err != nil {
			t.Fatal(err)
		}
		checkRefusal(t, up, resp, body, 403, "connect_refused")
	})
	t.Run("another host inside a tunnel", func(t *testing.T) {
		up.Reset()
		resp, body, err := tn.do("GET", "/checkout/v3/orders/x", "api.kustom.co", klarnaBasic)
		if err != nil {
			t.Fatal(err)
		}
		checkRefusal(t, up, resp, body, 421, "unknown_target")
	})
	t.Run("the tunnel's own host needs no second proxy_auth", func(t *testing.T) {
		up.Reset()
		resp, _, err := tn.do("GET", "/checkout/v3/orders/x", "api.klarna.com", klarnaBasic)
		if err != nil || resp.StatusCode != 200 || len(up.Requests()) != 1 {
			t.Errorf("in the tunnel: %v %v", resp, err)
		}
	})
	s := shimtest.ScrapeURL(t, "http://"+addr+"/metrics")
	for reason, min := range map[string]float64{"proxy_auth_required": 1, "upgrade_refused": 2, "connect_refused": 1, "unknown_target": 1} {
		if got := s.Value("kustom_shim_refused_total", map[string]string{"reason": reason}); got < min {
			t.Errorf("kustom_shim_refused_total{reason=%q} = %v, want at least %v", reason, got, min)
		}
	}
}

// A 502 says why, and its correlation id is in the error log line.
func TestUpstreamFailureSaysWhy(t *testing.T) {
	other := testupstream.New(t) // its CA is not the one the shim trusts
	for _, c := range []struct {
		name string
		up   *testupstream.Upstream
		ca   string
		want string
	}{
		{"connection refused", testupstream.Down(t), "", "the connection to api.kustom.co was refused"},
		{"TLS verification", testupstream.New(t), other.CAFile, "TLS verification of api.kustom.co failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := startShim(t, shimOpts{up: c.up, caFile: c.ca})
			shim := e.shim
			resp, body := do(t, shimtest.Client(), "GET", e.base+"/checkout/v3/orders/o1", klarnaUser, klarnaPassword, "", nil)
			var kb struct {
				Messages      []string `json:"error_messages"`
				CorrelationID string   `json:"correlation_id"`
			}
			if err := json.Unmarshal(body, &kb); err != nil || resp.StatusCode != 502 || len(kb.Messages) != 2 ||
				!strings.Contains(kb.Messages[1], c.want) || kb.CorrelationID == "" {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			shimtest.WaitFor(t, "the error log line", 5*time.Second, func() bool {
				for _, l := range strings.Split(shimtest.Logs(shim.ErrorLog), "\n") {
					if strings.Contains(l, "upstream request failed") && strings.Contains(l, `"correlation_id":"`+kb.CorrelationID+`"`) &&
						strings.Contains(l, c.want) {
						return true
					}
				}
				return false
			})
		})
	}
}

func TestUpstreamFailureDetail(t *testing.T) {
	for _, c := range []struct {
		err    error
		reason module.Reason
		want   string
	}{
		{&net.DNSError{Err: "no such host", Name: "api.kustom.co", IsNotFound: true}, module.ReasonUpstreamUnreachable, "DNS lookup of api.kustom.co failed"},
		{fmt.Errorf("dialing: %w", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), module.ReasonUpstreamUnreachable, "was refused"},
		{errors.New("context deadline exceeded"), module.ReasonUpstreamTimeout, "did not answer within the timeout"},
		{x509.UnknownAuthorityError{}, module.ReasonUpstreamUnreachable, "TLS verification of api.kustom.co failed"},
		{io.ErrUnexpectedEOF, module.ReasonUpstreamUnreachable, "closed before an answer"},
		{errors.New("something else"), module.ReasonUpstreamUnreachable, "api.kustom.co could not be reached"},
	} {
		if got := module.UpstreamFailureDetail(c.err, c.reason, "api.kustom.co"); !strings.Contains(got, c.want) {
			t.Errorf("%v: %q, want %q", c.err, got, c.want)
		}
	}
}
