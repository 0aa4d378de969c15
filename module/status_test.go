package module

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestStatusJSONShape(t *testing.T) {
	u := call(Checkout, LocalHost, KustomProduction, "shop1", KeySwapped, time.Minute)
	u.Clients = []Client{{UserAgent: "kco_rest_php/4.0.0", Seen: u.LastUsed}, {UserAgent: "curl/8.0", Seen: u.LastUsed.Add(-time.Hour)}}
	rep := BuildStatus([]Usage{u, failed(switched(OrderManagement, 2*time.Minute), FailureKeyRejected)}, longAgo, statusNow, 0)
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	want := []string{"action_required", "error", "evidence", "generated_at", "services", "shim_in_use", "source",
		"summary", "switch_complete", "verdict", "window"}
	if got := sortedKeys(top); !reflect.DeepEqual(got, want) {
		t.Errorf("keys %v, want %v", got, want)
	}
	var doc struct {
		Verdict  string `json:"verdict"`
		Evidence struct {
			ObservingSince *string `json:"observing_since"`
			Enough         bool    `json:"enough"`
			CallsSeen      bool    `json:"calls_seen"`
		} `json:"evidence"`
		ActionRequired []struct {
			Store string                       `json:"store"`
			Rows  []map[string]json.RawMessage `json:"rows"`
		} `json:"action_required"`
		Services []map[string]json.RawMessage `json:"services"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Verdict != "failing" || doc.Evidence.ObservingSince == nil || *doc.Evidence.ObservingSince != "2026-01-30T12:00:00Z" ||
		!doc.Evidence.Enough || !doc.Evidence.CallsSeen {
		t.Errorf("verdict %q evidence %+v", doc.Verdict, doc.Evidence)
	}
	if len(doc.ActionRequired) != 2 || doc.ActionRequired[0].Store != "shop1" || doc.ActionRequired[1].Store != "" {
		t.Fatalf("action_required %s", top["action_required"])
	}
	rowKeys := []string{"action_required", "clients", "credential", "from_host", "key", "last_failed", "last_failure",
		"last_ok", "last_used", "note", "service", "service_name", "state", "to_host"}
	for _, row := range doc.Services {
		if got := sortedKeys(row); !reflect.DeepEqual(got, rowKeys) {
			t.Errorf("row keys %v, want %v", got, rowKeys)
		}
	}
	first := doc.Services[0]
	for k, v := range map[string]string{"service": `"checkout"`, "from_host": `"local"`, "credential": `"shop1"`,
		"key": `"swapped"`, "state": `"bridged"`, "clients": `["kco_rest_php/4.0.0","curl/8.0"]`,
		"last_used": `"2026-03-01T11:59:00Z"`, "last_failed": "null"} {
		if string(first[k]) != v {
			t.Errorf("checkout row %s = %s, want %s", k, first[k], v)
		}
	}
	om := doc.Services[1]
	if string(om["state"]) != `"key_rejected"` || string(om["last_failure"]) != `"kustom_rejected_key"` {
		t.Errorf("order management row %v", om)
	}
	// A never-used service: nulls and empty strings, never missing keys.
	last := doc.Services[len(doc.Services)-1]
	if string(last["last_used"]) != "null" || string(last["state"]) != `"not_used"` || string(last["clients"]) != "[]" {
		t.Errorf("unused row %v", last)
	}

	// The CLI reads it back.
	var back StatusReport
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Verdict != rep.Verdict || len(back.Services) != len(rep.Services) || back.Services[0].Clients[0].UserAgent != "kco_rest_php/4.0.0" ||
		back.Summary() != rep.Summary() || len(back.ActionRequired) != 2 || !back.Evidence.ObservingSince.Equal(longAgo) {
		t.Errorf("round trip: %+v", back)
	}

	// An empty report has lists, not nulls.
	b, _ = json.Marshal(BuildStatus(nil, time.Time{}, statusNow, 0))
	if !strings.Contains(string(b), `"action_required":[]`) || !strings.Contains(string(b), `"observing_since":null`) ||
		!strings.Contains(string(b), `"verdict":"not_enough_evidence"`) {
		t.Errorf("empty report: %s", b)
	}
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func render(t *testing.T, rep StatusReport) string {
	t.Helper()
	var buf bytes.Buffer
	if err := renderStatusHTML(&buf, rep); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestStatusHTMLEscapes(t *testing.T) {
	evil := `<script>alert("x")</script>.klarna.com`
	u := call(Checkout, evil, `"><img src=x onerror=alert(1)>`, "a&b<i>", KeySwapped, time.Minute)
	u.Clients = []Client{{UserAgent: "<b>bold</b>"}}
	page := render(t, BuildStatus([]Usage{u}, longAgo, statusNow, 0))
	for _, raw := range []string{"<script", "<img", "<i>", "<b>bold", `onerror=alert(1)>`} {
		if strings.Contains(page, raw) {
			t.Errorf("page contains unescaped %q", raw)
		}
	}
	for _, esc := range []string{"&lt;script&gt;", "&lt;img src=x", "a&amp;b&lt;i&gt;", "&lt;b&gt;bold"} {
		if !strings.Contains(page, esc) {
			t.Errorf("page lacks escaped %q", esc)
		}
	}
}

// Each verdict's page says it in one line, in its colour class, and never
// shows another verdict's heading.
func TestStatusHTMLVerdicts(t *testing.T) {
	sidecar := call(Checkout, LocalHost, KustomProduction, "shop1", KeySwapped, 3*time.Minute)
	sidecar.Clients = []Client{{UserAgent: "curl/8.14.1"}}
	cases := []struct {
		name  string
		rep   StatusReport
		class string
		want  []string
	}{
		{"complete", BuildStatus([]Usage{switched(Checkout, time.Minute)}, longAgo, statusNow, 0), "ok",
			[]string{"Switch complete", "every call reached Kustom and worked", "remove that override, then the shim", "Switched"}},
		{"action required", BuildStatus([]Usage{sidecar}, longAgo, statusNow, 0), "warn",
			[]string{"Action required", `id="action-required"`, "<h3>store shop1</h3>", "curl/8.14.1",
				"The Kustom Portal (Integrations → API) may already show these services as switched", "Needs the shim",
				`<time datetime="2026-03-01T11:57:00Z">2026-03-01 11:57:00 UTC</time>`, "3 minutes ago", "the shim's own address"}},
		{"failing", BuildStatus([]Usage{failed(switched(Checkout, time.Minute), FailureUnreachable)}, longAgo, statusNow, 0), "fail",
			[]string{"Calls failing", "upstream_unreachable", "could not reach api.kustom.co", `class="failed"`}},
		{"not enough evidence", BuildStatus([]Usage{switched(Checkout, time.Minute)}, statusNow.Add(-3*time.Hour), statusNow, 0), "unknown",
			[]string{"Not enough evidence yet", "observing for 3 hours of 7 days"}},
		{"unavailable", UnavailableReport(statusNow, week, "prometheus", "Prometheus at http://127.0.0.1:1 could not be read"), "unknown",
			[]string{"Cannot tell", "could not be read", "Check that Prometheus is running"}},
	}
	titles := []string{"Switch complete", "Action required", "Calls failing", "Not enough evidence yet", "Cannot tell"}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			page := render(t, c.rep)
			if !strings.Contains(page, `id="verdict" class="callout `+c.class+`"`) {
				t.Errorf("verdict callout is not %q", c.class)
			}
			for _, w := range c.want {
				if !strings.Contains(page, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			_, title, _ := strings.Cut(page, "<title>")
			title, _, _ = strings.Cut(title, "</title>")
			for _, other := range titles {
				if strings.HasPrefix(title, other) != (verdictLooks[c.rep.Verdict].title == other) {
					t.Errorf("title %q and verdict %q disagree", title, c.rep.Verdict)
				}
			}
			for _, banned := range []string{"<script", "http://", "https://fonts", "@import", "url("} {
				p := strings.ReplaceAll(strings.ReplaceAll(page, "https://api.kustom.co", ""), "http://127.0.0.1:1", "")
				if strings.Contains(p, banned) {
					t.Errorf("page has %q: it must be self-contained", banned)
				}
			}
		})
	}
}

// The CSP allows the inline style by hash; the hash must be that of the
// style element as served.
func TestStatusCSPMatchesStyle(t *testing.T) {
	_, rest, _ := strings.Cut(render(t, BuildStatus(nil, time.Time{}, statusNow, 0)), "<style>")
	css, _, _ := strings.Cut(rest, "</style>")
	sum := sha256.Sum256([]byte(css))
	if want := "style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(statusCSP, want) {
		t.Errorf("CSP %q lacks %q", statusCSP, want)
	}
}

func TestWantsJSON(t *testing.T) {
	cases := []struct {
		accept, query string
		want          bool
	}{
		{"", "", false},
		{"application/json", "", true},
		{"application/json; charset=utf-8", "", true},
		{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "", false}, // a browser
		{"*/*", "", false}, // curl
		{"application/json, text/plain, */*", "", true}, // axios: named beats wildcard
		{"text/html;q=0.5, application/json;q=0.9", "", true},
		{"application/json;q=0.5, text/html", "", false},
		{"application/json;q=0", "", false},
		{"application/*", "", true},
		{"text/*, application/json", "", true}, // tie: application/json is the more specific
		{"text/html, application/json", "", false},
		{"application/json;q=bogus, text/html;q=0.1", "", false},
		{"", "format=json", true},
		{"application/json", "format=html", false},
		{"text/html", "format=JSON", true},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/kustom/status?"+c.query, nil)
		if c.accept != "" {
			r.Header.Set("Accept", c.accept)
		}
		if got := wantsJSON(r); got != c.want {
			t.Errorf("Accept %q query %q: JSON %v, want %v", c.accept, c.query, got, c.want)
		}
	}
}

func TestStatusHandlerServeHTTP(t *testing.T) {
	app := &App{tracker: NewTracker(time.Now().Add(-time.Hour))}
	app.Tracker().Entry(UsageKey{Checkout, "api.klarna.com", KustomProduction, "shop1", KeySwapped}).Used(time.Now().Add(-time.Minute), "curl/8")
	h := &StatusHandler{Window: caddy.Duration(DefaultStatusWindow), app: app}

	rec := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/kustom/status", nil)
	r.Header.Set("Accept", "application/json")
	if err := h.ServeHTTP(rec, r, nil); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" || rec.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("JSON: %d %v", rec.Code, rec.Header())
	}
	var rep StatusReport
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	// Used, never answered: failing, not green.
	if rep.SwitchComplete || rep.Verdict != VerdictFailing || len(rep.Services) != 5 || rep.Services[0].FromHost != "api.klarna.com" {
		t.Errorf("report %+v", rep)
	}

	rec = httptest.NewRecorder()
	if err := h.ServeHTTP(rec, httptest.NewRequest("GET", "/kustom/status", nil), nil); err != nil {
		t.Fatal(err)
	}
	hdr := rec.Header()
	if rec.Code != 200 || hdr.Get("Content-Type") != "text/html; charset=utf-8" || hdr.Get("Cache-Control") != "no-store" ||
		hdr.Get("Content-Security-Policy") == "" || hdr.Get("Vary") != "Accept" {
		t.Errorf("HTML: %d %v", rec.Code, hdr)
	}
	if !strings.Contains(rec.Body.String(), "Calls failing") {
		t.Error("HTML lacks the verdict")
	}

	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodOptions} {
		rec = httptest.NewRecorder()
		if err := h.ServeHTTP(rec, httptest.NewRequest(m, "/kustom/status", nil), nil); err != nil {
			t.Fatal(err)
		}
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: %d Allow %q", m, rec.Code, rec.Header().Get("Allow"))
		}
	}
}
