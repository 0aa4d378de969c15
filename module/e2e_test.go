package module_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testdns"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// Secrets used across the end-to-end tests; none may ever show up in a log,
// an error body or a response.
const (
	klarnaUser     = "K123456_abcd12345"
	klarnaPassword = "klarna-secret-pw-0001"
	kustomKey      = "kco_test_api_secret-key-0002"
	kustomUser     = "PM0001-abcd"
	kustomPassword = "kustom-secret-pw-0003"
	hashedUser     = "K777_hashed"
	hashedPassword = "klarna-hashed-pw-0004"
)

func secrets() []string {
	return []string{klarnaPassword, kustomKey, kustomPassword, hashedPassword,
		base64.StdEncoding.EncodeToString([]byte(kustomUser + ":" + kustomPassword)),
		base64.StdEncoding.EncodeToString([]byte(klarnaUser + ":" + klarnaPassword))}
}

// indent places extra kustom options in the block, two tabs deeper, as
// caddy fmt would (an unformatted Caddyfile draws a warning); nested blocks
// keep their own indentation.
func indent(options string) string {
	var b strings.Builder
	for _, line := range strings.Split(options, "\n") {
		if strings.TrimSpace(line) != "" {
			b.WriteString("\t\t" + strings.TrimRight(line, " \t") + "\n")
		}
	}
	return b.String()
}

func do(t *testing.T, c *http.Client, method, url, user, pass string, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if user != "" || pass != "" {
		req.SetBasicAuth(user, pass)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestSidecarCreateOrderSwapsCredentialsAndRewritesLocation(t *testing.T) {
	e := startSidecar(t, "")
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "https://api.kustom.co/checkout/v3/orders/order-1")
		w.Header().Set("Klarna-Correlation-Id", "corr-from-upstream")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"order_id":"order-1","status":"checkout_incomplete"}`)
	})
	body := `{"purchase_country":"SE","order_amount":10000,"order_lines":[{"name":"ö","total_amount":10000}]}`
	resp, got := do(t, shimtest.Client(), "POST", e.base+"/checkout/v3/orders?trace=a%2Fb&x=1", klarnaUser, klarnaPassword, body,
		map[string]string{"Klarna-Idempotency-Key": "idem-123", "Content-Type": "application/json",
			"User-Agent": "Klarna/kco_rest_php", "X-Forwarded-For": "10.1.2.3", "Proxy-Authorization": "Basic c2VjcmV0",
			"X-Forwarded-Host": "shop.internal", "X-Forwarded-Proto": "http", "Forwarded": "for=10.1.2.3", "X-Real-Ip": "10.1.2.3"})

	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("status %d, body %s", resp.StatusCode, got)
	}
	if string(got) != `{"order_id":"order-1","status":"checkout_incomplete"}` {
		t.Errorf("client body %q", got)
	}
	if c := resp.Header.Get("Klarna-Correlation-Id"); c != "corr-from-upstream" {
		t.Errorf("Klarna-Correlation-Id %q", c)
	}
	if loc := resp.Header.Get("Location"); loc != e.base+"/checkout/v3/orders/order-1" {
		t.Errorf("Location %q, want it on the shim's origin %s", loc, e.base)
	}

	reqs := e.up.Requests()
	if len(reqs) != 1 {
		t.Fatalf("upstream got %d requests", len(reqs))
	}
	r := reqs[0]
	checks := []struct{ what, got, want string }{
		{"method", r.Method, "POST"},
		{"Host", r.Host, "api.kustom.co"},
		{"TLS server name", r.ServerName, "api.kustom.co"},
		{"path", r.Path, "/checkout/v3/orders"},
		{"query", r.RawQuery, "trace=a%2Fb&x=1"},
		{"body", string(r.Body), body},
		{"Authorization", r.Header.Get("Authorization"), "Basic " + kustomKey},
		{"Klarna-Idempotency-Key", r.Header.Get("Klarna-Idempotency-Key"), "idem-123"},
		{"Content-Type", r.Header.Get("Content-Type"), "application/json"},
		{"User-Agent", r.Header.Get("User-Agent"), "Klarna/kco_rest_php"},
		{"protocol (HTTP/2 to the upstream)", r.Proto, "HTTP/2.0"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("upstream %s = %q, want %q", c.what, c.got, c.want)
		}
	}
	for name := range r.Header {
		if strings.HasPrefix(name, "X-Forwarded-") || name == "Proxy-Authorization" || name == "Forwarded" || name == "X-Real-Ip" {
			t.Errorf("upstream received %s: %q", name, r.Header.Get(name))
		}
	}

	// The access log names service, credential and upstream, never a secret.
	var entry map[string]any
	shimtest.WaitFor(t, "access log entry", 5*time.Second, func() bool {
		lines := strings.Split(strings.TrimSpace(shimtest.Logs(e.shim.AccessLog)), "\n")
		return json.Unmarshal([]byte(lines[len(lines)-1]), &entry) == nil
	})
	for k, want := range map[string]string{"kustom_service": "checkout", "kustom_credential": "shop1",
		"kustom_upstream": "api.kustom.co", "kustom_from_host": "local"} {
		if entry[k] != want {
			t.Errorf("access log %s = %v, want %s", k, entry[k], want)
		}
	}
	logs := shimtest.Logs(e.shim.AccessLog) + shimtest.Logs(e.shim.ErrorLog)
	if s, leaked := shimtest.Contains(logs, secrets()...); leaked {
		t.Errorf("a secret (%.6s…) is in the logs", s)
	}
	if strings.Contains(logs, `"order_amount"`) {
		t.Error("a request body is in the logs")
	}
}

func TestCredentialForms(t *testing.T) {
	e := startSidecar(t, "")
	cases := []struct {
		name, user, pass, wantAuth string
	}{
		{"api key alone", klarnaUser, klarnaPassword, "Basic " + kustomKey},
		{"username and password", "K222_second", klarnaPassword,
			"Basic " + base64.StdEncoding.EncodeToString([]byte(kustomUser+":"+kustomPassword))},
		{"bcrypt-hashed klarna password", hashedUser, hashedPassword, "Basic " + kustomKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.up.Reset()
			// Twice: the second hashed check comes from Caddy's cache.
			for i := 0; i < 2; i++ {
				resp, body := do(t, shimtest.Client(), "GET", e.base+"/ordermanagement/v1/orders/o-1", c.user, c.pass, "", nil)
				if resp.StatusCode != 200 {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
			}
			reqs := e.up.Requests()
			if len(reqs) != 2 || reqs[0].Header.Get("Authorization") != c.wantAuth {
				t.Fatalf("upstream got %d requests, Authorization %q", len(reqs), reqs[0].Header.Get("Authorization"))
			}
		})
	}
}

type refusalCase struct {
	name, method, host, path, auth string
	status                         int
	reason                         string
}

func checkRefusals(t *testing.T, e *env, cases []refusalCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.up.Reset()
			hdr := map[string]string{}
			if c.host != "" {
				hdr["Host"] = c.host
			}
			if c.auth != "" {
				hdr["Authorization"] = c.auth
			}
			resp, raw := do(t, shimtest.Client(), c.method, e.base+c.path, "", "", `{"order_amount":1}`, hdr)
			checkRefusal(t, e.up, resp, raw, c.status, c.reason)
		})
	}
}

func basicAuth(u, p string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p))
}

func TestRefusalsNeverReachUpstream(t *testing.T) {
	e := startSidecar(t, "")
	good := basicAuth(klarnaUser, klarnaPassword)
	checkRefusals(t, e, []refusalCase{
		{"wrong password", "POST", "", "/checkout/v3/orders", basicAuth(klarnaUser, "nope"), 401, "wrong_password"},
		{"wrong hashed password", "GET", "", "/checkout/v3/orders/1", basicAuth(hashedUser, "nope"), 401, "wrong_password"},
		{"unknown username", "POST", "", "/checkout/v3/orders", basicAuth("K999_nobody", klarnaPassword), 401, "unknown_username"},
		{"malformed authorization", "POST", "", "/checkout/v3/orders", "Basic not-base64!!", 401, "malformed_authorization"},
		{"bearer instead of basic", "POST", "", "/checkout/v3/orders", "Bearer abc", 401, "malformed_authorization"},
		{"missing authorization", "POST", "", "/checkout/v3/orders", "", 401, "missing_credentials"},
		{"klarna payments path", "POST", "", "/payments/v1/sessions", good, 403, "unmatched_path"},
		{"unknown path", "GET", "", "/", good, 403, "unmatched_path"},
		{"dot segments", "GET", "", "/checkout/v3/../../payments/v1/sessions", good, 403, "unmatched_path"},
		{"non-API klarna host", "GET", "pay.klarna.com", "/checkout/v3/orders/1", good, 421, "unknown_target"},
		{"unmapped kustom host", "GET", "js.kustom.co", "/checkout/v3/orders/1", good, 421, "unknown_target"},
	})
}

func TestUnknownCredentialsKeep(t *testing.T) {
	e := startSidecar(t, "unknown_credentials keep")
	cases := []struct{ name, auth string }{
		{"unknown Klarna username", basicAuth("K999_other", "their-own")},
		{"Kustom key alone", "Basic kco_live_api_already-switched"},
		{"no Authorization", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.up.Reset()
			hdr := map[string]string{}
			if c.auth != "" {
				hdr["Authorization"] = c.auth
			}
			resp, body := do(t, shimtest.Client(), "GET", e.base+"/settlements/v1/payouts?size=10", "", "", "", hdr)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			reqs := e.up.Requests()
			if len(reqs) != 1 || reqs[0].Header.Get("Authorization") != c.auth {
				t.Fatalf("upstream Authorization %q, want the caller's own %q", reqs[0].Header.Get("Authorization"), c.auth)
			}
		})
	}
	// A known username with a wrong password is still refused under keep.
	checkRefusals(t, e, []refusalCase{
		{"known username, wrong password", "GET", "", "/settlements/v1/payouts", basicAuth(klarnaUser, "nope"), 401, "wrong_password"},
	})
	// And a configured one is still swapped.
	e.up.Reset()
	do(t, shimtest.Client(), "GET", e.base+"/hpp/v1/sessions/s1", klarnaUser, klarnaPassword, "", nil)
	if r := e.up.Requests(); len(r) != 1 || r[0].Header.Get("Authorization") != "Basic "+kustomKey {
		t.Fatalf("configured credential not swapped under keep")
	}
}

func TestUpstreamDownIs502InKlarnaShape(t *testing.T) {
	e := startShim(t, shimOpts{up: testupstream.Down(t), bareUpstream: true, accessLog: true})
	shim := e.shim
	resp, raw := do(t, shimtest.Client(), "POST", e.base+"/ordermanagement/v1/orders/o1/captures",
		klarnaUser, klarnaPassword, `{"captured_amount":1}`, map[string]string{"Klarna-Idempotency-Key": "k1"})
	checkRefusal(t, nil, resp, raw, 502, "upstream_unreachable")
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil || body["error_code"] != "BAD_GATEWAY" || body["correlation_id"] == "" {
		t.Fatalf("body %s", raw)
	}
	if s, leaked := shimtest.Contains(string(raw)+shimtest.Logs(shim.ErrorLog), secrets()...); leaked {
		t.Errorf("secret %.6s… leaked", s)
	}
	// The access log entry says what happened, each field once.
	var line string
	shimtest.WaitFor(t, "the access log entry", 5*time.Second, func() bool {
		line = strings.TrimSpace(shimtest.Logs(shim.AccessLog))
		return line != ""
	})
	for field, want := range map[string]int{`"kustom_service":"order_management"`: 1, `"kustom_upstream":"api.kustom.co"`: 1,
		`"kustom_refusal":"upstream_unreachable"`: 1, `"kustom_credential":"shop1"`: 1} {
		if n := strings.Count(line, field); n != want {
			t.Errorf("access log has %s %d times, want %d: %s", field, n, want, line)
		}
	}
}

// TestKlarnaHostForm is the DNS-override setup: the app resolves the Klarna
// hosts to the shim and trusts Caddy's local root, nothing else.
func TestKlarnaHostForm(t *testing.T) {
	t.Setenv("KS_KLARNA_PW", klarnaPassword)
	t.Setenv("KS_KUSTOM_KEY", kustomKey)
	shim := shimtest.New(t)
	up := testupstream.New(t)
	port := shim.StartPort(t, 0, func(port int) string {
		return shim.Globals("local_certs") + fmt.Sprintf(`
https://api.klarna.com:%[1]d, https://api.playground.klarna.com:%[1]d {
	tls internal
%[2]s}

https://:%[1]d {
	tls internal
	kustom {
		default_target none
	}
}
`, port, shopKustom(up, ""))
	})

	client := klarnaHostClient(t, shim, port, "api.klarna.com", "api.playground.klarna.com")
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "https://"+r.Host+"/ordermanagement/v1/orders/o1/captures/c1")
		w.Header().Set("Capture-Id", "c1")
		w.WriteHeader(http.StatusCreated)
	})
	cases := []struct{ klarnaHost, kustomHost string }{
		{"api.klarna.com", "api.kustom.co"},
		{"api.playground.klarna.com", "api.playground.kustom.co"},
	}
	t.Run("a Host the site does not list", func(t *testing.T) {
		up.Reset()
		// Any other Host on the same listener: the shim's refusal (from a
		// catch-all site, as the README shows), not Caddy's empty 200.
		for _, host := range []string{"example.com", "pay.klarna.com", "js.kustom.co"} {
			resp, raw := do(t, client, "GET", fmt.Sprintf("https://api.klarna.com:%d/checkout/v3/orders/o1", port),
				klarnaUser, klarnaPassword, "", map[string]string{"Host": host})
			checkRefusal(t, up, resp, raw, http.StatusMisdirectedRequest, "unknown_target")
		}
	})
	for _, c := range cases {
		t.Run(c.klarnaHost, func(t *testing.T) {
			up.Reset()
			url := fmt.Sprintf("https://%s:%d/ordermanagement/v1/orders/o1/captures", c.klarnaHost, port)
			resp, raw := do(t, client, "POST", url, klarnaUser, klarnaPassword, `{"captured_amount":100}`,
				map[string]string{"Klarna-Idempotency-Key": "cap-1"})
			if resp.StatusCode != 201 {
				t.Fatalf("status %d: %s", resp.StatusCode, raw)
			}
			want := fmt.Sprintf("https://%s:%d/ordermanagement/v1/orders/o1/captures/c1", c.klarnaHost, port)
			if loc := resp.Header.Get("Location"); loc != want {
				t.Errorf("Location %q, want %q", loc, want)
			}
			if resp.Header.Get("Capture-Id") != "c1" {
				t.Errorf("Capture-Id not passed through")
			}
			r := up.Requests()
			if len(r) != 1 {
				t.Fatalf("upstream got %d requests", len(r))
			}
			if r[0].Host != c.kustomHost || r[0].ServerName != c.kustomHost {
				t.Errorf("upstream Host %q SNI %q, want %q", r[0].Host, r[0].ServerName, c.kustomHost)
			}
			if r[0].Header.Get("Authorization") != "Basic "+kustomKey || string(r[0].Body) != `{"captured_amount":100}` ||
				r[0].Header.Get("Klarna-Idempotency-Key") != "cap-1" {
				t.Errorf("upstream got %+v", r[0])
			}
		})
	}
}

// klarnaHostClient resolves every host to the shim's loopback port and
// trusts only the root of Caddy's internal CA, as an app behind a hosts-file
// override that imported that root would.
func klarnaHostClient(t *testing.T, shim *shimtest.Shim, port int, hosts ...string) *http.Client {
	t.Helper()
	// Caddy issues the site certificates in the background after it starts.
	for _, h := range hosts {
		crt := filepath.Join(shim.Dir, "certificates", "local", h, h+".crt")
		shimtest.WaitFor(t, "certificate for "+h, 15*time.Second, func() bool { _, err := os.Stat(crt); return err == nil })
	}
	pemBytes, err := os.ReadFile(filepath.Join(shim.Dir, "pki", "authorities", "local", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("bad root PEM")
	}
	// The file is written a moment before the certificate is in Caddy's
	// cache: wait until a handshake for each host succeeds.
	for _, h := range hosts {
		shimtest.WaitFor(t, "a TLS handshake for "+h, 15*time.Second, func() bool {
			c, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{ServerName: h, RootCAs: pool})
			if err != nil {
				return false
			}
			c.Close()
			return true
		})
	}
	c := shimtest.Client()
	c.Transport = &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
		},
	}
	return c
}

func TestUnmatchedPassthrough(t *testing.T) {
	// The passthrough URL names the recording upstream as "localhost", so
	// the Host it receives tells a passthrough from a Kustom-bound request.
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	up := testupstream.New(t)
	e := startShim(t, shimOpts{up: up, accessLog: true, shop2: true, hashed: true, more: "unmatched passthrough https://localhost:" + port(up.Addr)})
	resp, raw := do(t, shimtest.Client(), "POST", e.base+"/payments/v1/sessions", "PK_payments_user", "their-secret", `{"a":1}`,
		map[string]string{"X-Forwarded-For": "10.1.2.3", "Forwarded": "for=10.1.2.3"})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, raw)
	}
	r := e.up.Requests()
	if len(r) != 1 {
		t.Fatalf("upstream got %d requests", len(r))
	}
	if want := "localhost:" + port(e.up.Addr); r[0].Host != want || r[0].ServerName != "localhost" {
		t.Errorf("passthrough went to Host %q SNI %q, want %q", r[0].Host, r[0].ServerName, want)
	}
	if r[0].Header.Get("Authorization") != basicAuth("PK_payments_user", "their-secret") {
		t.Errorf("passthrough changed the caller's credentials: %q", r[0].Header.Get("Authorization"))
	}
	if r[0].Path != "/payments/v1/sessions" || string(r[0].Body) != `{"a":1}` {
		t.Errorf("passthrough request %+v", r[0])
	}
	for _, name := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded"} {
		if v, ok := r[0].Header[name]; ok {
			t.Errorf("passthrough sent %s: %q", name, v)
		}
	}
}

// TestResponseStreams shows that the shim forwards a response as it comes:
// the client reads the first part while the upstream still holds the rest.
func TestResponseStreams(t *testing.T) {
	e := startSidecar(t, "")
	release := make(chan struct{})
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/csv")
		_, _ = io.WriteString(w, "payout_id,amount\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		_, _ = io.WriteString(w, "p1,100\n")
	})
	req, _ := http.NewRequest("GET", e.base+"/settlements/v1/reports/payout?payment_reference=p1", nil)
	req.SetBasicAuth(klarnaUser, klarnaPassword)
	resp, err := shimtest.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() { line, _ := br.ReadString('\n'); first <- line }()
	select {
	case line := <-first:
		if line != "payout_id,amount\n" {
			t.Fatalf("first line %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first part of the report did not arrive while the upstream held the rest: the response is buffered")
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if string(rest) != "p1,100\n" {
		t.Errorf("rest %q", rest)
	}
}

// TestDNSOverrideFlow: an app whose DNS (here a DNS server on loopback)
// points the Klarna hosts at the shim, and which trusts only Caddy's local
// root, runs a checkout and an order-management flow unchanged.
func TestDNSOverrideFlow(t *testing.T) {
	t.Setenv("KS_KLARNA_PW", klarnaPassword)
	t.Setenv("KS_KUSTOM_KEY", kustomKey)
	shim := shimtest.New(t)
	up := testupstream.New(t)
	hosts := []string{"api.klarna.com", "api-na.klarna.com", "api.playground.klarna.com"}
	port := shim.StartPort(t, 0, func(port int) string {
		sites := make([]string, len(hosts))
		for i, h := range hosts {
			sites[i] = fmt.Sprintf("https://%s:%d", h, port)
		}
		return shim.Globals("local_certs") + fmt.Sprintf(`
%s {
	tls internal
%s}`, strings.Join(sites, ", "), shopKustom(up, ""))
	})
	kustomFlow(up)
	pool, _ := caddyRoot(t, shim)
	dns := testdns.Start(t, hosts...)
	dialer := &net.Dialer{Resolver: dns.Resolver(), Timeout: 5 * time.Second}
	c := shimtest.Client()
	c.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DialContext: dialer.DialContext, ForceAttemptHTTP2: true}
	for _, h := range hosts {
		want := map[string]string{"api.klarna.com": "api.kustom.co", "api-na.klarna.com": "api.kustom.co",
			"api.playground.klarna.com": "api.playground.kustom.co"}[h]
		t.Run(h, func(t *testing.T) {
			base := fmt.Sprintf("https://%s:%d", h, port)
			shimtest.WaitFor(t, "the certificate for "+h, 15*time.Second, func() bool {
				resp, err := c.Get(base + "/customer-token/v1/tokens/t0")
				if err == nil {
					resp.Body.Close()
				}
				return err == nil
			})
			up.Reset()
			runKlarnaFlow(t, c, base)
			checkUpstreamFlow(t, up, want)
		})
	}
}
