package hotpath

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kustomshim/kustomshim/module"
)

// distinctPasswords bounds the environment variables the benchmark sets;
// credential i uses password i % distinctPasswords.
const distinctPasswords = 16

func store(b *testing.B, n int) *module.CredentialStore {
	b.Helper()
	b.Setenv("KSB_KUSTOM_KEY", "kco_test_api_bench-key")
	for i := 0; i < distinctPasswords; i++ {
		b.Setenv(fmt.Sprintf("KSB_PW_%d", i), password(i))
	}
	creds := make([]module.Credential, n)
	for i := range creds {
		creds[i] = module.Credential{
			Name:           fmt.Sprintf("store-%d", i),
			KlarnaUsername: username(i),
			KlarnaPassword: fmt.Sprintf("{env.KSB_PW_%d}", i%distinctPasswords),
			KustomAPIKey:   "{env.KSB_KUSTOM_KEY}",
		}
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	s, _, err := module.NewCredentialStore(ctx, creds, "")
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func username(i int) string { return fmt.Sprintf("K%d_klarna", i) }
func password(i int) string { return fmt.Sprintf("klarna-pw-%d", i%distinctPasswords) }

func klarnaAuth(i int) []string {
	return []string{"Basic " + base64.StdEncoding.EncodeToString([]byte(username(i)+":"+password(i)))}
}

// The handler's collectors are unexported; these mirror them (same label
// sets and buckets, see module/metrics.go) so that the metrics part of the
// hot path costs here what it costs there: the same client_golang calls.
var (
	mRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kustom_shim_requests_total"},
		[]string{"service", "from_host", "to_host", "code"})
	mDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kustom_shim_request_duration_seconds",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"service"})
	mCredentials = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kustom_shim_credentials_total"},
		[]string{"credential", "result"})
)

// logFields mirrors module's request.logFields: one inline field with the
// kustom_* keys, added once to Caddy's per-request ExtraLogFields (the
// handler skips it when the server keeps no access log).
func logFields(extra *caddyhttp.ExtraLogFields, service module.Service, route module.Route, credential string) {
	extra.Add(zap.Inline(logObject{service, route.FromHost, route.ToHost, credential}))
}

type logObject struct {
	service              module.Service
	from, to, credential string
}

func (o logObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("kustom_service", string(o.service))
	enc.AddString("kustom_from_host", o.from)
	enc.AddString("kustom_upstream", o.to)
	enc.AddString("kustom_credential", o.credential)
	return nil
}

// The handler resolves these series once (per credential, per service).
var (
	swappedCounter   = mCredentials.WithLabelValues("store-5", module.ResultSwapped)
	checkoutDuration = mDuration.WithLabelValues("checkout")
)

var (
	sinkOutcome module.AuthOutcome
	sinkString  string
	sinkBool    bool
	sinkExtra   *caddyhttp.ExtraLogFields
)

type hotCase struct{ name, method, path, host, location string }

var hotCases = []hotCase{
	{"get_order_sidecar", "GET", "/checkout/v3/orders/0003a1b2-c3d4-e5f6-a7b8-c9d0e1f2a3b4", "localhost:8080", ""},
	{"create_order_klarna_host", "POST", "/checkout/v3/orders", "api.klarna.com",
		"https://api.kustom.co/checkout/v3/orders/0003a1b2-c3d4-e5f6-a7b8-c9d0e1f2a3b4"},
}

// BenchmarkHotPath is what module.Handler.ServeHTTP does for one swapped
// request besides Caddy's reverse proxy: classify the path, resolve the
// host, authenticate and swap the credentials, count, look for a deprecated
// endpoint, note the last use, set the access-log fields, rewrite the
// Location of the answer, and observe the duration. It must cost the same
// with 10 or 10 000 credentials.
//
// Not covered (unexported): the originWriter wrapper the handler allocates
// per request and the request-body limit check. One allocation per
// iteration is Caddy's own (the ExtraLogFields it makes per request).
func BenchmarkHotPath(b *testing.B) {
	hosts, err := module.NewHostMap(nil, module.TargetProduction)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{10, 10000} {
		b.Run(fmt.Sprintf("credentials=%d", n), func(b *testing.B) {
			creds := store(b, n)
			tracker := module.NewTracker(time.Now())
			auth := klarnaAuth(n / 2)
			probe := httptest.NewRequest("GET", "/", nil)
			probe.Header["Authorization"] = auth
			swapped := []string{creds.Authenticate(probe).Authorization}
			for _, c := range hotCases {
				b.Run(c.name, func(b *testing.B) {
					r := httptest.NewRequest(c.method, "http://"+c.host+c.path, nil)
					r.Host = c.host
					r.Header.Set("User-Agent", "kco_rest_php/4.0.0 (legacy shop)")
					b.ReportAllocs()
					for b.Loop() {
						r.Header["Authorization"] = auth // as the client sent it
						extra := new(caddyhttp.ExtraLogFields)
						service := module.Classify(r.URL.Path)
						route, ok := hosts.Resolve(r.Host)
						if !ok || service != module.Checkout {
							b.Fatalf("route %+v service %s", route, service)
						}
						out := creds.Authenticate(r)
						swappedCounter.Inc()
						if out.Result != module.ResultSwapped {
							b.Fatalf("outcome %+v", out)
						}
						r.Header["Authorization"] = swapped // the handler's is built once per credential
						if _, dep := module.DeprecatedEndpoint(r.Method, r.URL.Path); dep {
							b.Fatal("deprecated")
						}
						logFields(extra, service, route, out.Credential)
						origins := module.Origins{Upstream: "https://" + route.ToHost}
						start := time.Now()
						evidence := tracker.Entry(module.UsageKey{Service: service, FromHost: route.FromHost, ToHost: route.ToHost,
							Credential: out.Credential, Key: module.KeySwapped})
						evidence.Used(start, r.Header.Get("User-Agent"))
						if c.location != "" {
							// The client origin is worked out only when a URL is there.
							origins.Client = module.ClientOrigin(r)
							sinkString, _ = origins.ToClient(c.location)
						}
						now := time.Now()
						checkoutDuration.Observe(now.Sub(start).Seconds())
						evidence.OK(now)
						mRequests.WithLabelValues(string(service), route.FromHost, route.ToHost, "200").Inc()
						sinkOutcome, sinkExtra = out, extra
					}
				})
			}
		})
	}
}

// BenchmarkHotPathParts times each step of BenchmarkHotPath alone (the
// sidecar GET, 10 credentials), to tell where its time and allocations go.
func BenchmarkHotPathParts(b *testing.B) {
	hosts, err := module.NewHostMap(nil, module.TargetProduction)
	if err != nil {
		b.Fatal(err)
	}
	creds := store(b, 10)
	tracker := module.NewTracker(time.Now())
	auth := klarnaAuth(5)
	c := hotCases[0]
	r := httptest.NewRequest(c.method, "http://"+c.host+c.path, nil)
	r.Header["Authorization"] = auth
	r.Header.Set("User-Agent", "kco_rest_php/4.0.0 (legacy shop)")
	route, _ := hosts.Resolve(r.Host)
	key := module.UsageKey{Service: module.Checkout, FromHost: route.FromHost, ToHost: route.ToHost,
		Credential: "shop5", Key: module.KeySwapped}
	parts := []struct {
		name string
		f    func()
	}{
		{"classify", func() { sinkBool = module.Classify(r.URL.Path) == module.Checkout }},
		{"resolve_host", func() { route, sinkBool = hosts.Resolve(r.Host) }},
		{"authenticate", func() { sinkOutcome = creds.Authenticate(r) }},
		{"swap_header", func() {
			r.Header["Authorization"] = []string{sinkOutcome.Authorization}
			r.Header["Authorization"] = auth
		}},
		{"deprecated_endpoint", func() { _, sinkBool = module.DeprecatedEndpoint(r.Method, r.URL.Path) }},
		{"client_origin", func() { sinkString = module.ClientOrigin(r) }},
		{"tracker_record", func() {
			e := tracker.Entry(key)
			e.Used(time.Now(), r.Header.Get("User-Agent"))
			e.OK(time.Now())
		}},
		{"metrics", func() {
			swappedCounter.Inc()
			checkoutDuration.Observe(0.001)
			mRequests.WithLabelValues("checkout", route.FromHost, route.ToHost, "200").Inc()
		}},
		{"access_log_fields", func() {
			extra := new(caddyhttp.ExtraLogFields)
			logFields(extra, module.Checkout, route, "store-5")
			sinkExtra = extra
		}},
		{"rewrite_location", func() {
			sinkString, _ = module.RewriteOrigin("https://api.kustom.co/checkout/v3/orders/o1", "https://api.kustom.co", "https://api.klarna.com")
		}},
	}
	sinkOutcome = creds.Authenticate(r)
	for _, p := range parts {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.f()
			}
		})
	}
}

// TestHotPathSetup runs the benchmark's setup once, so that `go test ./...`
// catches a broken benchmark without running it.
func TestHotPathSetup(t *testing.T) {
	hosts, err := module.NewHostMap(nil, module.TargetProduction)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := hosts.Resolve("api.klarna.com"); !ok || r.ToHost != module.KustomProduction {
		t.Fatalf("api.klarna.com resolves to %+v", r)
	}
	r := httptest.NewRequest(http.MethodGet, "http://localhost:8080/checkout/v3/orders/o1", nil)
	if got := module.ClientOrigin(r); got != "http://localhost:8080" {
		t.Fatalf("ClientOrigin %q", got)
	}
}
