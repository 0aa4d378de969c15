package module

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

func TestUnbrokenSince(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	at := func(ago time.Duration) model.SamplePair {
		return model.SamplePair{Timestamp: model.TimeFromUnixNano(now.Add(-ago).UnixNano()), Value: 1}
	}
	series := func(agos ...time.Duration) []model.SamplePair {
		var out []model.SamplePair
		for _, a := range agos {
			out = append(out, at(a))
		}
		return out
	}
	every := func(from, to time.Duration) []time.Duration { // ago values, every 5 minutes
		var out []time.Duration
		for a := from; a >= to; a -= 5 * time.Minute {
			out = append(out, a)
		}
		return out
	}
	gap := 15 * time.Minute
	cases := []struct {
		name   string
		points []model.SamplePair
		want   time.Time
	}{
		{"unbroken", series(every(3*time.Hour, 0)...), now.Add(-3 * time.Hour)},
		{"a break longer than the gap restarts coverage",
			series(append(every(3*time.Hour, 2*time.Hour), every(10*time.Minute, 0)...)...), now.Add(-10 * time.Minute)},
		{"a short break does not", series(40*time.Minute, 30*time.Minute, 20*time.Minute, 10*time.Minute, 0), now.Add(-40 * time.Minute)},
		{"not present now", series(every(3*time.Hour, time.Hour)...), time.Time{}},
		{"nothing", nil, time.Time{}},
	}
	for _, c := range cases {
		if got := unbrokenSince(c.points, now, gap); !got.Equal(c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestPrometheusMatchAndSelectors(t *testing.T) {
	p, _ := NewPrometheusSource("http://prom:9090")
	for _, ok := range []string{``, `job="kustom-shim"`, `job="kustom-shim", namespace=~"shop-.*"`, `env!="staging",`} {
		if _, err := p.WithMatch(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{`{job="x"}`, `job=x`, `job="x"} or vector(1) or {a="b"`, "job=\"x\"\n", `job="x" a="b"`} {
		if _, err := p.WithMatch(bad); err == nil || !strings.Contains(err.Error(), "prometheus_match") {
			t.Errorf("%q accepted: %v", bad, err)
		}
	}
	p, _ = p.WithMatch(`job="kustom-shim"`)
	used, _, failed, claimed, present := p.evidenceQueries(7 * 24 * time.Hour)
	for _, q := range []string{used, failed} {
		if !strings.Contains(q, `{job="kustom-shim",key!=""}`) {
			t.Errorf("row query %q is not narrowed to the fleet and to rows with a key", q)
		}
	}
	for _, q := range []string{claimed, present} {
		if !strings.Contains(q, `kustom_shim_observing_since_timestamp_seconds{job="kustom-shim"}`) {
			t.Errorf("evidence query %q is not narrowed to the fleet", q)
		}
	}
}

// fakeProm answers every query with an empty success and, when warn, a
// warning, as a Prometheus whose remote read failed does.
func fakeProm(t *testing.T, warn bool) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data := map[string]any{"resultType": "vector", "result": []any{}}
		if r.URL.Path == "/api/v1/query_range" {
			data = map[string]any{"resultType": "matrix", "result": []any{}}
		}
		if strings.Contains(r.FormValue("query"), "observing_since") && r.URL.Path == "/api/v1/query" {
			data["result"] = []any{map[string]any{"metric": map[string]string{}, "value": []any{time.Now().Unix(), "1000"}}}
		}
		body := map[string]any{"status": "success", "data": data}
		if warn {
			body["warnings"] = []string{"remote read: store unavailable"}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A partial answer could be missing exactly the failures: never a verdict.
func TestPrometheusWarningsAreUnavailable(t *testing.T) {
	p, err := NewPrometheusSource(fakeProm(t, true))
	if err != nil {
		t.Fatal(err)
	}
	rep := p.Report(context.Background(), time.Now(), time.Hour)
	if rep.Verdict != VerdictUnavailable || rep.SwitchComplete || !strings.Contains(rep.Error, "partial answer") {
		t.Errorf("report %+v", rep)
	}
	// Without warnings, the same empty answers are no evidence: not green.
	p, _ = NewPrometheusSource(fakeProm(t, false))
	if rep = p.Report(context.Background(), time.Now(), time.Hour); rep.Verdict != VerdictNotEnough {
		t.Errorf("empty fleet: %+v", rep)
	}
}
