package module_test

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/kustomshim/kustomshim/internal/shimtest"
)

// startMetricsShim runs a shim with a /metrics endpoint on the same site, as
// a sidecar deployment would expose it, and the credential metrics1.
func startMetricsShim(t *testing.T) *env {
	t.Helper()
	return startShim(t, shimOpts{globals: "kustom {\n\t\tflush_interval 1s\n\t\tinstance_id test-a\n\t}", metrics: true, cred: "metrics1"})
}

func send(t *testing.T, base, method, path, host, user, pass string) int {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, nil)
	if host != "" {
		req.Host = host
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := shimtest.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestMetricsAfterKnownTraffic(t *testing.T) {
	m := startMetricsShim(t)
	m.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "POST" && r.URL.Path == "/checkout/v3/orders":
			w.WriteHeader(201)
		case strings.HasSuffix(r.URL.Path, "/extend-due-date"):
			w.WriteHeader(204)
		default:
			w.WriteHeader(200)
		}
	})
	before := m.scrape(t)
	start := time.Now()
	for i := 0; i < 3; i++ {
		send(t, m.base, "POST", "/checkout/v3/orders", "", klarnaUser, klarnaPassword)
	}
	for i := 0; i < 2; i++ {
		send(t, m.base, "GET", "/ordermanagement/v1/orders/o1", "api.klarna.com", klarnaUser, klarnaPassword)
	}
	send(t, m.base, "PATCH", "/ordermanagement/v1/orders/o1/captures/c1/extend-due-date", "api.playground.klarna.com", klarnaUser, klarnaPassword)
	send(t, m.base, "POST", "/checkout/v3/orders", "", klarnaUser, "wrong")
	send(t, m.base, "POST", "/payments/v1/sessions", "", klarnaUser, klarnaPassword)
	send(t, m.base, "GET", "/checkout/v3/orders/o1", "pay.klarna.com", klarnaUser, klarnaPassword)
	after := m.scrape(t)

	type series = map[string]string
	checks := []struct {
		metric string
		labels series
		delta  float64
	}{
		{"kustom_shim_requests_total", series{"service": "checkout", "from_host": "local", "to_host": "api.kustom.co", "code": "201"}, 3},
		{"kustom_shim_requests_total", series{"service": "order_management", "from_host": "api.klarna.com", "to_host": "api.kustom.co", "code": "200"}, 2},
		{"kustom_shim_requests_total", series{"service": "order_management", "from_host": "api.playground.klarna.com", "to_host": "api.playground.kustom.co", "code": "204"}, 1},
		{"kustom_shim_requests_total", series{"service": "checkout", "from_host": "local", "to_host": "none", "code": "401"}, 1},
		{"kustom_shim_requests_total", series{"service": "unmatched", "from_host": "local", "to_host": "none", "code": "403"}, 1},
		{"kustom_shim_requests_total", series{"service": "checkout", "from_host": "unknown", "to_host": "none", "code": "421"}, 1},
		{"kustom_shim_requests_total", nil, 9},
		{"kustom_shim_credentials_total", series{"credential": "metrics1", "result": "swapped"}, 6},
		{"kustom_shim_credentials_total", series{"credential": "metrics1", "result": "rejected"}, 1},
		{"kustom_shim_refused_total", series{"reason": "wrong_password"}, 1},
		{"kustom_shim_refused_total", series{"reason": "unmatched_path"}, 1},
		{"kustom_shim_refused_total", series{"reason": "unknown_target"}, 1},
		{"kustom_shim_deprecated_calls_total", series{"service": "order_management", "endpoint": "extend-due-date"}, 1},
		{"kustom_shim_request_duration_seconds", series{"service": "checkout"}, 3},
		{"kustom_shim_request_duration_seconds", series{"service": "order_management"}, 3},
	}
	for _, c := range checks {
		if got := after.Value(c.metric, c.labels) - before.Value(c.metric, c.labels); got != c.delta {
			t.Errorf("%s%v went up by %v, want %v", c.metric, c.labels, got, c.delta)
		}
	}
	for _, l := range []series{
		{"service": "checkout", "from_host": "local", "to_host": "api.kustom.co"},
		{"service": "order_management", "from_host": "api.klarna.com", "to_host": "api.kustom.co"},
		{"service": "order_management", "from_host": "api.playground.klarna.com", "to_host": "api.playground.kustom.co"},
	} {
		ts := after.Value("kustom_shim_last_used_timestamp_seconds", l)
		if d := ts - float64(start.UnixNano())/1e9; d < -0.001 || d > 10 {
			t.Errorf("last used %v = %v, want within 10s after %v", l, ts, float64(start.Unix()))
		}
	}
	if n := after.Series("kustom_shim_last_used_timestamp_seconds"); n != 3 {
		t.Errorf("%d last-used series, want 3 (refused requests were never sent): %v", n, after.Labels("kustom_shim_last_used_timestamp_seconds"))
	}
	promtoolCheckMetrics(t, after.Text)
	if s, leaked := shimtest.Contains(after.Text, secrets()...); leaked {
		t.Errorf("metrics leak a secret (%.6s…)", s)
	}
}

// promtoolCheckMetrics runs Prometheus's own linter on a scrape and fails on
// anything it says about the shim's metrics.
func promtoolCheckMetrics(t *testing.T, text string) {
	t.Helper()
	path := shimtest.Tool(t, "prometheus", "promtool")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, _ := cmd.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "kustom_shim") {
			t.Errorf("promtool check metrics: %s", line)
		}
	}
}

// TestMetricsBoundedUnderFlood: made-up hosts, order ids, paths and users
// must not add a single series.
func TestMetricsBoundedUnderFlood(t *testing.T) {
	m := startMetricsShim(t)
	rnd := rand.New(rand.NewSource(1))
	word := func() string { return fmt.Sprintf("x%08x", rnd.Uint32()) }
	kinds := []func() (method, path, host, user string){
		func() (string, string, string, string) { // random order id, sidecar
			return "GET", "/checkout/v3/orders/" + word(), "", klarnaUser
		},
		func() (string, string, string, string) { // random non-API host: default target
			return "GET", "/ordermanagement/v1/orders/" + word(), word() + ".example", klarnaUser
		},
		func() (string, string, string, string) { // random Klarna subdomain: refused
			return "GET", "/checkout/v3/orders/" + word(), word() + ".klarna.com", klarnaUser
		},
		func() (string, string, string, string) { // random path: unmatched
			return "POST", "/" + word() + "/v1/" + word(), "", klarnaUser
		},
		func() (string, string, string, string) { // random username: rejected
			return "GET", "/settlements/v1/payouts/" + word(), "", "K" + word()
		},
	}
	// One of each kind first, so that every legitimate series exists.
	for _, k := range kinds {
		method, path, host, user := k()
		send(t, m.base, method, path, host, user, klarnaPassword)
	}
	before := m.scrape(t)
	for i := 0; i < 500; i++ {
		method, path, host, user := kinds[i%len(kinds)]()
		send(t, m.base, method, path, host, user, klarnaPassword)
	}
	after := m.scrape(t)
	for name := range after.Families {
		if !strings.HasPrefix(name, "kustom_shim_") {
			continue
		}
		if b, a := before.Series(name), after.Series(name); a != b {
			t.Errorf("%s: %d series before the flood, %d after: %v", name, b, a, after.Labels(name))
		}
	}
	if got := after.Value("kustom_shim_requests_total", nil) - before.Value("kustom_shim_requests_total", nil); got != 500 {
		t.Errorf("requests_total went up by %v, want 500", got)
	}
}

// TestMetricsSurviveReload: a config reload (here with a new Kustom key)
// keeps the counters and the last-used state, and the new key is used.
func TestMetricsSurviveReload(t *testing.T) {
	m := startMetricsShim(t)
	for i := 0; i < 4; i++ {
		send(t, m.base, "GET", "/hpp/v1/sessions/s1", "api.klarna.com", klarnaUser, klarnaPassword)
	}
	labels := map[string]string{"service": "hosted_payment_page", "from_host": "api.klarna.com", "code": "200"}
	lu := map[string]string{"service": "hosted_payment_page", "from_host": "api.klarna.com", "to_host": "api.kustom.co"}
	before := m.scrape(t)

	t.Setenv("KS_KUSTOM_KEY_2", "kco_test_api_rotated-key-0005")
	if err := caddy.Load(shimtest.Adapt(t, m.config("KS_KUSTOM_KEY_2")), true); err != nil {
		t.Fatal(err)
	}
	mid := m.scrape(t)
	if got, want := mid.Value("kustom_shim_requests_total", labels), before.Value("kustom_shim_requests_total", labels); got != want {
		t.Errorf("requests_total after reload = %v, want %v (kept)", got, want)
	}
	if got, want := mid.Value("kustom_shim_last_used_timestamp_seconds", lu), before.Value("kustom_shim_last_used_timestamp_seconds", lu); got != want || got == 0 {
		t.Errorf("last used after reload = %v, want %v (kept)", got, want)
	}
	m.up.Reset()
	send(t, m.base, "GET", "/hpp/v1/sessions/s1", "api.klarna.com", klarnaUser, klarnaPassword)
	after := m.scrape(t)
	if got, want := after.Value("kustom_shim_requests_total", labels), before.Value("kustom_shim_requests_total", labels)+1; got != want {
		t.Errorf("requests_total after one more request = %v, want %v", got, want)
	}
	if r := m.up.Requests(); len(r) != 1 || r[0].Header.Get("Authorization") != "Basic kco_test_api_rotated-key-0005" {
		t.Errorf("after the reload the upstream did not get the new key")
	}
}

// TestLastUsedSurvivesRestartAndSharesStorage: state is written to Caddy's
// storage, read back by a restarted shim, and merged with what another
// instance sharing that storage wrote.
func TestLastUsedSurvivesRestartAndSharesStorage(t *testing.T) {
	m := startMetricsShim(t)
	shim := m.shim
	send(t, m.base, "POST", "/checkout/v3/orders", "api-na.klarna.com", klarnaUser, klarnaPassword)
	key := map[string]string{"service": "checkout", "from_host": "api-na.klarna.com", "to_host": "api.kustom.co"}
	before := m.scrape(t)
	seen := before.Value("kustom_shim_last_used_timestamp_seconds", key)
	if seen == 0 {
		t.Fatal("no last-used value before the restart")
	}
	since := before.Value("kustom_shim_observing_since_timestamp_seconds", nil)
	if since == 0 || since > seen {
		t.Fatalf("observing since %v, first call %v", since, seen)
	}

	// Stop writes the state; a new process start reads it back.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(shim.Dir, "kustom-shim", "last-used", "test-a.json")
	b, err := os.ReadFile(own)
	if err != nil || !strings.Contains(string(b), `"from_host": "api-na.klarna.com"`) {
		t.Fatalf("state file %s: %v\n%s", own, err, b)
	}
	// Another instance, sharing this storage, saw traffic on api-oc.klarna.com.
	peerTime := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	peerSince := time.Now().Add(-48 * time.Hour).UTC().Truncate(time.Second)
	peer := fmt.Sprintf(`{"version":2,"instance":"test-b","written":%q,"observing_since":%q,"usage":[{"service":"settlement","from_host":"api-oc.klarna.com","to_host":"api.kustom.co","credential":"shop9","key":"swapped","last_used":%q,"last_ok":%q}]}`,
		time.Now().UTC().Format(time.RFC3339), peerSince.Format(time.RFC3339), peerTime.Format(time.RFC3339), peerTime.Format(time.RFC3339))
	if err := os.WriteFile(filepath.Join(shim.Dir, "kustom-shim", "last-used", "test-b.json"), []byte(peer), 0o600); err != nil {
		t.Fatal(err)
	}
	// A file from a shim that recorded no outcomes does not count.
	old := `{"instance":"test-c","written":"2026-01-01T00:00:00Z","usage":[{"service":"customer_token","from_host":"api.kustom.co","to_host":"api.kustom.co","last_used":"2026-01-01T00:00:00Z"}]}`
	if err := os.WriteFile(filepath.Join(shim.Dir, "kustom-shim", "last-used", "test-c.json"), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}

	m.restart(t)
	after := m.scrape(t)
	if got := after.Value("kustom_shim_last_used_timestamp_seconds", key); math.Abs(got-seen) > 1e-6 {
		t.Errorf("after restart last used = %v, want %v (restored from storage)", got, seen)
	}
	peerKey := map[string]string{"service": "settlement", "from_host": "api-oc.klarna.com", "to_host": "api.kustom.co",
		"credential": "shop9", "key": "swapped"}
	if got := after.Value("kustom_shim_last_used_timestamp_seconds", peerKey); got != float64(peerTime.Unix()) {
		t.Errorf("peer's last used = %v, want %v", got, float64(peerTime.Unix()))
	}
	if got := after.Value("kustom_shim_last_success_timestamp_seconds", peerKey); got != float64(peerTime.Unix()) {
		t.Errorf("peer's last success = %v, want %v", got, float64(peerTime.Unix()))
	}
	// Observing began where the fleet first began: the peer, two days ago.
	if got := after.Value("kustom_shim_observing_since_timestamp_seconds", nil); got != float64(peerSince.Unix()) {
		t.Errorf("observing since after restart = %v, want the peer's %v", got, float64(peerSince.Unix()))
	}
	if n := after.Value("kustom_shim_last_used_timestamp_seconds", map[string]string{"service": "customer_token"}); n != 0 {
		t.Errorf("an old-format state file counted: %v", n)
	}
	// This instance's own start survived the restart.
	b, err = os.ReadFile(own)
	if err != nil || !strings.Contains(string(b), `"observing_since": "`+time.Unix(int64(since), 0).UTC().Format("2006-01-02T15:04:05")) {
		t.Errorf("own state after restart: %v\n%s", err, b)
	}

	// And a peer's later write is picked up while running (flush_interval 1s).
	later := time.Now().UTC().Truncate(time.Second)
	peer = strings.Replace(peer, peerTime.Format(time.RFC3339), later.Format(time.RFC3339), 1)
	if err := os.WriteFile(filepath.Join(shim.Dir, "kustom-shim", "last-used", "test-b.json"), []byte(peer), 0o600); err != nil {
		t.Fatal(err)
	}
	shimtest.WaitFor(t, "the peer's new write", 5*time.Second, func() bool {
		return m.scrape(t).Value("kustom_shim_last_used_timestamp_seconds", peerKey) == float64(later.Unix())
	})
}
