package module_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// The shim under test, as the end-to-end tests run it: a real Caddy with one
// site on a loopback port in front of the recording TLS upstream, from a
// Caddyfile that shimOpts describes.

// shimOpts is what a test's shim has besides the kustom handler with its
// upstream and the credential shop1 (klarnaUser, an API key).
type shimOpts struct {
	up           *testupstream.Upstream // dialled as `upstream https://…` and trusted through its CA; nil: a new one
	bareUpstream bool                   // name up.Addr as a bare host:port, with no trust pool (an upstream that is down)
	caFile       string                 // trust this CA instead of up's
	transport    []string               // more `transport http` options
	globals      string                 // more global options
	admin        bool                   // the admin API on a loopback port (env.admin)
	accessLog    bool                   // the site logs to shim.AccessLog, as JSON
	metrics      bool                   // metrics /metrics
	status       bool                   // kustom_status /kustom/status, after kustom: the directive orders itself
	statusOpts   string                 // … with these options
	gateway      bool                   // default_target none and intercept_connect
	cred         string                 // the first credential's name: "" for shop1
	credOpts     string                 // more options in it
	noCred       bool                   // no first credential at all
	keyVar       string                 // the env var of its Kustom key: "" for KS_KUSTOM_KEY
	shop2        bool                   // credential shop2: K222_second, with a Kustom username and password
	hashed       bool                   // credential hashed: hashedUser, with a bcrypt Klarna password
	more         string                 // more kustom options
}

// env is a running shim.
type env struct {
	shim      *shimtest.Shim
	up        *testupstream.Upstream
	opts      shimOpts // the running config
	base      string   // http://127.0.0.1:port
	port      int
	adminPort int
	admin     string // the admin API's base URL; "" when off
}

// startShim runs the shim o describes, with the secrets it reads in the
// environment, on ports of its own (see shimtest.Port).
func startShim(t *testing.T, o shimOpts) *env {
	t.Helper()
	t.Setenv("KS_KLARNA_PW", klarnaPassword)
	t.Setenv("KS_KUSTOM_KEY", kustomKey)
	t.Setenv("KS_KUSTOM_PW", kustomPassword)
	if o.up == nil {
		o.up = testupstream.New(t)
	}
	e := &env{shim: shimtest.New(t), up: o.up, opts: o}
	e.start(t, nil)
	return e
}

// start loads e.opts on the ports given (nil: new ones), or on new ones if
// something took those.
func (e *env) start(t *testing.T, ports []int) {
	t.Helper()
	if ports == nil {
		ports = make([]int, 1)
		if e.opts.admin {
			ports = make([]int, 2)
		}
	}
	ports = e.shim.StartPorts(t, ports, func(p []int) string {
		e.setPorts(p)
		return e.caddyfile(e.opts)
	})
	e.setPorts(ports)
}

func (e *env) setPorts(p []int) {
	e.port, e.base = p[0], fmt.Sprintf("http://127.0.0.1:%d", p[0])
	e.adminPort, e.admin = 0, ""
	if len(p) > 1 {
		e.adminPort, e.admin = p[1], fmt.Sprintf("http://127.0.0.1:%d", p[1])
	}
}

// restart starts the shim again after caddy.Stop, on the same ports unless
// something took them meanwhile (e.base says where it runs).
func (e *env) restart(t *testing.T) {
	t.Helper()
	ports := []int{e.port}
	if e.opts.admin {
		ports = append(ports, e.adminPort)
	}
	e.start(t, ports)
}

// reload loads o in place of the running config, on its ports.
func (e *env) reload(t *testing.T, o shimOpts) {
	t.Helper()
	e.shim.Start(t, e.caddyfile(o))
	e.opts = o
}

// config is the running config with the first credential's Kustom key read
// from keyVar instead, for a reload.
func (e *env) config(keyVar string) string {
	o := e.opts
	o.keyVar = keyVar
	return e.caddyfile(o)
}

func (e *env) scrape(t *testing.T) shimtest.Scrape {
	t.Helper()
	return shimtest.ScrapeURL(t, e.base+"/metrics")
}

// addr is the site's host:port, for raw connections.
func (e *env) addr() string { return strings.TrimPrefix(e.base, "http://") }

// caddyfile is o's Caddyfile on e's ports.
func (e *env) caddyfile(o shimOpts) string {
	globals := e.shim.Globals(o.globals)
	if o.admin {
		globals = e.shim.GlobalsWithAdmin(fmt.Sprintf("127.0.0.1:%d", e.adminPort), o.globals)
	}
	var site strings.Builder
	if o.accessLog {
		fmt.Fprintf(&site, "\tlog {\n\t\toutput file %s\n\t\tformat json\n\t}\n", e.shim.AccessLog)
	}
	if o.metrics {
		site.WriteString("\tmetrics /metrics\n")
	}
	site.WriteString(kustomBlock(o))
	if o.status {
		site.WriteString("\tkustom_status /kustom/status")
		if o.statusOpts != "" {
			site.WriteString(" {\n" + indent(o.statusOpts) + "\t}")
		}
		site.WriteString("\n")
	}
	return globals + fmt.Sprintf("\nhttp://:%d {\n%s}\n", e.port, site.String())
}

// kustomBlock is o's kustom directive.
func kustomBlock(o shimOpts) string {
	var b strings.Builder
	b.WriteString("\tkustom {\n")
	transport := o.transport
	if o.bareUpstream {
		fmt.Fprintf(&b, "\t\tupstream %s\n", o.up.Addr)
	} else {
		fmt.Fprintf(&b, "\t\tupstream https://%s\n", o.up.Addr)
		ca := o.up.CAFile
		if o.caFile != "" {
			ca = o.caFile
		}
		transport = append([]string{"tls_trust_pool file " + ca}, transport...)
	}
	if len(transport) > 0 {
		b.WriteString("\t\ttransport http {\n\t\t\t" + strings.Join(transport, "\n\t\t\t") + "\n\t\t}\n")
	}
	if o.gateway {
		b.WriteString("\t\tdefault_target none\n\t\tintercept_connect\n")
	}
	if !o.noCred {
		name, keyVar := o.cred, o.keyVar
		if name == "" {
			name = "shop1"
		}
		if keyVar == "" {
			keyVar = "KS_KUSTOM_KEY"
		}
		fmt.Fprintf(&b, "\t\tcredential %s {\n\t\t\tklarna_username %s\n\t\t\tklarna_password {env.KS_KLARNA_PW}\n\t\t\tkustom_api_key {env.%s}\n",
			name, klarnaUser, keyVar)
		for _, line := range strings.SplitAfter(indent(o.credOpts), "\n") {
			if line != "" {
				b.WriteString("\t" + line)
			}
		}
		b.WriteString("\t\t}\n")
	}
	if o.shop2 {
		fmt.Fprintf(&b, "\t\tcredential shop2 {\n\t\t\tklarna_username K222_second\n\t\t\tklarna_password {env.KS_KLARNA_PW}\n"+
			"\t\t\tkustom_username %s\n\t\t\tkustom_password {env.KS_KUSTOM_PW}\n\t\t}\n", kustomUser)
	}
	if o.hashed {
		fmt.Fprintf(&b, "\t\tcredential hashed {\n\t\t\tklarna_username %s\n\t\t\tklarna_password_hash %s\n"+
			"\t\t\tkustom_api_key {env.KS_KUSTOM_KEY}\n\t\t}\n", hashedUser, hashedPasswordHash())
	}
	b.WriteString(indent(o.more))
	b.WriteString("\t}\n")
	return b.String()
}

// hashedPasswordHash is hashedPassword's bcrypt hash, made once.
var hashedPasswordHash = sync.OnceValue(func() string {
	hash, err := bcrypt.GenerateFromPassword([]byte(hashedPassword), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(hash)
})

// shopKustom is the kustom directive with the recording upstream, shop1 and
// extra options, for a test that writes its own sites.
func shopKustom(up *testupstream.Upstream, extra string) string {
	return kustomBlock(shimOpts{up: up, more: extra})
}

// The shims most tests run.

// startSidecar runs the shim as a sidecar on loopback, with shop1, shop2
// (Kustom username and password) and hashed (a bcrypt Klarna password), an
// access log, and extra kustom options.
func startSidecar(t *testing.T, options string) *env {
	t.Helper()
	return startShim(t, shimOpts{accessLog: true, shop2: true, hashed: true, more: options})
}

// startGateway runs the HTTPS_PROXY form: no default target,
// intercept_connect, shop1, and extra kustom options.
func startGateway(t *testing.T, extra string) *env {
	t.Helper()
	return startShim(t, shimOpts{gateway: true, more: extra})
}

// startFaultShim runs the shim as an operator runs it, with o's upstream and
// options: an access log, /metrics and the status page on the site, and the
// credentials shop1 and shop2.
func startFaultShim(t *testing.T, o shimOpts) *env {
	t.Helper()
	o.accessLog, o.metrics, o.status, o.shop2 = true, true, true, true
	return startShim(t, o)
}

// startSwitchShim runs a shim whose site has the status page (with status
// options) and metrics, before a kustom handler on up with shop1 and extra
// options, and a flush interval of 1 s.
func startSwitchShim(t *testing.T, up *testupstream.Upstream, statusOpts, extra string) *env {
	t.Helper()
	return startShim(t, shimOpts{up: up, globals: "kustom {\n\t\tflush_interval 1s\n\t}", status: true, statusOpts: statusOpts,
		metrics: true, more: extra})
}

// checkRefusal checks one of the shim's own answers: its status and reason
// (Kustom-Shim-Error), which end the test when wrong; the Klarna error shape
// a client library parses (error_code, error_messages, a correlation_id that
// Klarna-Correlation-Id repeats, Content-Type application/json); that the
// body shows no secret; and, given up, that the upstream received nothing.
func checkRefusal(t *testing.T, up *testupstream.Upstream, resp *http.Response, raw []byte, status int, reason string) {
	t.Helper()
	if resp.StatusCode != status || resp.Header.Get("Kustom-Shim-Error") != reason {
		t.Fatalf("status %d reason %q, want %d %q: %s", resp.StatusCode, resp.Header.Get("Kustom-Shim-Error"), status, reason, raw)
	}
	var body struct {
		ErrorCode     string   `json:"error_code"`
		ErrorMessages []string `json:"error_messages"`
		CorrelationID string   `json:"correlation_id"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("body is not Klarna-style JSON: %v: %s", err, raw)
	}
	if body.ErrorCode == "" || len(body.ErrorMessages) == 0 || body.CorrelationID == "" ||
		resp.Header.Get("Klarna-Correlation-Id") != body.CorrelationID || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("incomplete Klarna error: Content-Type %q, correlation header %q, body %s",
			resp.Header.Get("Content-Type"), resp.Header.Get("Klarna-Correlation-Id"), raw)
	}
	if s, leaked := shimtest.Contains(string(raw), secrets()...); leaked {
		t.Errorf("error body leaks %.6s…", s)
	}
	if up != nil {
		if r := up.Requests(); len(r) != 0 {
			t.Errorf("upstream received %d requests for a refused one, e.g. %s %s", len(r), r[0].Method, r[0].Path)
		}
	}
}
