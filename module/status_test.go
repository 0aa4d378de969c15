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

var statusNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func used(s Service, from, to string, ago time.Duration) Usage {
	return Usage{UsageKey: UsageKey{Service: s, FromHost: from, ToHost: to}, LastUsed: statusNow.Add(-ago)}
}

// rowKey is what a test expects of one row.
type rowKey struct {
	service  Service
	from, to string
	action   bool
}

func rowKeys(rep StatusReport) []rowKey {
	var out []rowKey
	for _, r := range rep.Services {
		out = append(out, rowKey{r.Service, r.FromHost, r.ToHost, r.NeedsAction()})
	}
	return out
}

// unused is the row of a service never seen.
func unused(s Service) rowKey { return rowKey{service: s} }

func TestBuildStatus(t *testing.T) {
	week := DefaultStatusWindow
	cases := []struct {
		name         string
		usage        []Usage
		window       time.Duration
		rows         []rowKey
		complete     bool
		shimInUse    bool
		actionSubstr []string // in the row action texts, in order
		notes        map[Service]string
	}{
		{
			name: "nothing seen",
			rows: []rowKey{unused(Checkout), unused(OrderManagement), unused(Settlement),
				unused(HostedPaymentPage), unused(CustomerToken)},
			complete: true,
			notes:    map[Service]string{Checkout: "not used", CustomerToken: "not used"},
		},
		{
			name:  "klarna host used a minute ago",
			usage: []Usage{used(Checkout, "api.klarna.com", KustomProduction, time.Minute)},
			rows: []rowKey{{Checkout, "api.klarna.com", KustomProduction, true}, unused(OrderManagement),
				unused(Settlement), unused(HostedPaymentPage), unused(CustomerToken)},
			shimInUse: true,
			actionSubstr: []string{"Switch the app calling api.klarna.com to https://api.kustom.co (its base URL) " +
				"and to Kustom API keys (Kustom Portal → Integrations → Generate new), then remove the shim"},
		},
		{
			name:  "klarna host used 8 days ago, 7 day window",
			usage: []Usage{used(Settlement, "api.klarna.com", KustomProduction, 8*24*time.Hour)},
			rows: []rowKey{unused(Checkout), unused(OrderManagement), {Settlement, "api.klarna.com", KustomProduction, false},
				unused(HostedPaymentPage), unused(CustomerToken)},
			complete: true,
			notes:    map[Service]string{Settlement: "not called on a Klarna host for more than 7 days"},
		},
		{
			name:   "klarna host used 8 days ago, 10 day window",
			usage:  []Usage{used(Settlement, "api.klarna.com", KustomProduction, 8*24*time.Hour)},
			window: 10 * 24 * time.Hour,
			rows: []rowKey{unused(Checkout), unused(OrderManagement), {Settlement, "api.klarna.com", KustomProduction, true},
				unused(HostedPaymentPage), unused(CustomerToken)},
			shimInUse: true,
		},
		{
			name:  "exactly at the window edge still counts",
			usage: []Usage{used(Checkout, "api.klarna.com", KustomProduction, week)},
			rows: []rowKey{{Checkout, "api.klarna.com", KustomProduction, true}, unused(OrderManagement),
				unused(Settlement), unused(HostedPaymentPage), unused(CustomerToken)},
			shimInUse: true,
		},
		{
			name: "mixed hosts for one service",
			usage: []Usage{
				used(OrderManagement, KustomProduction, KustomProduction, time.Hour),
				used(OrderManagement, "api-na.klarna.com", KustomProduction, 2*time.Hour),
				used(OrderManagement, "api.klarna.com", KustomProduction, 30*24*time.Hour),
			},
			rows: []rowKey{unused(Checkout),
				{OrderManagement, "api-na.klarna.com", KustomProduction, true},
				{OrderManagement, "api.klarna.com", KustomProduction, false},
				{OrderManagement, KustomProduction, KustomProduction, false},
				unused(Settlement), unused(HostedPaymentPage), unused(CustomerToken)},
			shimInUse:    true,
			actionSubstr: []string{"calling api-na.klarna.com to https://api.kustom.co"},
		},
		{
			name: "sidecar rows need no action but say why the shim stays",
			usage: []Usage{
				used(Checkout, LocalHost, KustomProduction, time.Minute),
				used(HostedPaymentPage, LocalHost, KustomPlayground, time.Minute),
			},
			rows: []rowKey{{Checkout, LocalHost, KustomProduction, false}, unused(OrderManagement), unused(Settlement),
				{HostedPaymentPage, LocalHost, KustomPlayground, false}, unused(CustomerToken)},
			complete:  true,
			shimInUse: true,
			notes: map[Service]string{
				Checkout: "reaches Kustom through the shim: set the app's base URL to https://api.kustom.co and its keys " +
					"to Kustom keys before removing the shim",
				HostedPaymentPage: "reaches Kustom through the shim: set the app's base URL to https://api.playground.kustom.co",
			},
		},
		{
			name:  "playground target",
			usage: []Usage{used(CustomerToken, "api-oc.playground.klarna.com", KustomPlayground, time.Second)},
			rows: []rowKey{unused(Checkout), unused(OrderManagement), unused(Settlement), unused(HostedPaymentPage),
				{CustomerToken, "api-oc.playground.klarna.com", KustomPlayground, true}},
			shimInUse:    true,
			actionSubstr: []string{"Switch the app calling api-oc.playground.klarna.com to https://api.playground.kustom.co (its base URL)"},
		},
		{
			name: "unmatched is shown when seen and never needs action",
			usage: []Usage{
				used(Unmatched, "api.klarna.com", "api.klarna.com", time.Minute),
				used(Checkout, KustomProduction, KustomProduction, 20*24*time.Hour),
			},
			rows: []rowKey{{Checkout, KustomProduction, KustomProduction, false}, unused(OrderManagement), unused(Settlement),
				unused(HostedPaymentPage), unused(CustomerToken), {Unmatched, "api.klarna.com", "api.klarna.com", false}},
			complete:  true,
			shimInUse: true,
			notes: map[Service]string{
				Unmatched: "not a Kustom API (for example Klarna Payments)",
				Checkout:  "already calls api.kustom.co, but through the shim",
			},
		},
		{
			name: "old traffic only: complete and the shim is idle",
			usage: []Usage{
				used(Checkout, LocalHost, KustomProduction, 9*24*time.Hour),
				used(Checkout, "api.klarna.com", KustomProduction, 9*24*time.Hour),
			},
			rows: []rowKey{{Checkout, "api.klarna.com", KustomProduction, false}, {Checkout, LocalHost, KustomProduction, false},
				unused(OrderManagement), unused(Settlement), unused(HostedPaymentPage), unused(CustomerToken)},
			complete: true,
		},
		{
			name: "duplicate keys keep the latest",
			usage: []Usage{
				used(Checkout, "api.klarna.com", KustomProduction, 30*24*time.Hour),
				used(Checkout, "api.klarna.com", KustomProduction, time.Hour),
			},
			rows: []rowKey{{Checkout, "api.klarna.com", KustomProduction, true}, unused(OrderManagement),
				unused(Settlement), unused(HostedPaymentPage), unused(CustomerToken)},
			shimInUse: true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep := BuildStatus(c.usage, statusNow, c.window)
			if got := rowKeys(rep); !reflect.DeepEqual(got, c.rows) {
				t.Errorf("rows\n got %v\nwant %v", got, c.rows)
			}
			if rep.SwitchComplete != c.complete {
				t.Errorf("SwitchComplete = %v, want %v", rep.SwitchComplete, c.complete)
			}
			if rep.ShimInUse != c.shimInUse {
				t.Errorf("ShimInUse = %v, want %v", rep.ShimInUse, c.shimInUse)
			}
			wantWindow := c.window
			if wantWindow == 0 {
				wantWindow = DefaultStatusWindow
			}
			if rep.Window != wantWindow || !rep.GeneratedAt.Equal(statusNow) {
				t.Errorf("Window %v GeneratedAt %v", rep.Window, rep.GeneratedAt)
			}
			var actions []string
			for _, r := range rep.Services {
				if r.NeedsAction() {
					actions = append(actions, r.ActionRequired)
					if r.Note != "" {
						t.Errorf("%s row has both an action and a note %q", r.Service, r.Note)
					}
				}
				if r.LastUsed.IsZero() != (r.FromHost == "") {
					t.Errorf("%s row: hosts %q→%q with last used %v", r.Service, r.FromHost, r.ToHost, r.LastUsed)
				}
			}
			if len(actions) != len(rep.ActionRequired) {
				t.Errorf("report lists %d actions, rows have %d", len(rep.ActionRequired), len(actions))
			}
			for i, a := range actions {
				if i < len(rep.ActionRequired) && !strings.HasSuffix(rep.ActionRequired[i], ": "+a) {
					t.Errorf("ActionRequired[%d] = %q, want the row's action %q after the service name", i, rep.ActionRequired[i], a)
				}
			}
			for i, want := range c.actionSubstr {
				if i >= len(actions) || !strings.Contains(actions[i], want) {
					t.Errorf("action %d: got %q, want it to contain %q", i, actions, want)
				}
			}
			for svc, want := range c.notes {
				found := false
				for _, r := range rep.Services {
					if r.Service == svc && strings.Contains(r.Note, want) {
						found = true
					}
				}
				if !found {
					t.Errorf("no %s row with a note containing %q: %+v", svc, want, rep.Services)
				}
			}
		})
	}
}

func TestBuildStatusActionListNamesService(t *testing.T) {
	rep := BuildStatus([]Usage{used(OrderManagement, "api.klarna.com", KustomProduction, time.Minute)}, statusNow, 0)
	if len(rep.ActionRequired) != 1 || !strings.HasPrefix(rep.ActionRequired[0], "Order management: Switch the app calling api.klarna.com") {
		t.Errorf("ActionRequired = %q", rep.ActionRequired)
	}
}

func TestStatusJSONShape(t *testing.T) {
	rep := BuildStatus([]Usage{
		{UsageKey: UsageKey{Checkout, "api.klarna.com", KustomProduction}, LastUsed: statusNow.Add(-3*time.Minute - 500*time.Millisecond)},
	}, statusNow.Add(250*time.Millisecond), 0)
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	if got, want := sortedKeys(top), []string{"action_required", "generated_at", "services", "shim_in_use", "switch_complete", "window"}; !reflect.DeepEqual(got, want) {
		t.Errorf("top-level keys %v, want %v", got, want)
	}
	var doc struct {
		SwitchComplete *bool            `json:"switch_complete"`
		Window         string           `json:"window"`
		GeneratedAt    string           `json:"generated_at"`
		ActionRequired []string         `json:"action_required"`
		Services       []map[string]any `json:"services"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.SwitchComplete == nil || *doc.SwitchComplete {
		t.Errorf("switch_complete %v", doc.SwitchComplete)
	}
	if doc.Window != "168h0m0s" {
		t.Errorf("window %q", doc.Window)
	}
	if doc.GeneratedAt != "2026-03-01T12:00:00Z" {
		t.Errorf("generated_at %q, want RFC 3339 in UTC, whole seconds", doc.GeneratedAt)
	}
	if len(doc.Services) != 5 {
		t.Fatalf("%d services: %s", len(doc.Services), b)
	}
	rowKeysWant := []string{"action_required", "from_host", "last_used", "note", "service", "service_name", "to_host"}
	for _, s := range doc.Services {
		keys := make([]string, 0, len(s))
		for k := range s {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if !reflect.DeepEqual(keys, rowKeysWant) {
			t.Errorf("row keys %v, want %v", keys, rowKeysWant)
		}
	}
	first := doc.Services[0]
	if first["service"] != "checkout" || first["service_name"] != "Checkout" || first["from_host"] != "api.klarna.com" ||
		first["to_host"] != "api.kustom.co" || first["note"] != "" {
		t.Errorf("first row %v", first)
	}
	lu, _ := first["last_used"].(string)
	if lu != "2026-03-01T11:56:59Z" {
		t.Errorf("last_used %q, want RFC 3339 UTC whole seconds", lu)
	}
	if _, err := time.Parse(time.RFC3339, lu); err != nil {
		t.Errorf("last_used: %v", err)
	}
	if a, _ := first["action_required"].(string); !strings.HasPrefix(a, "Switch the app calling api.klarna.com") {
		t.Errorf("action_required %q", a)
	}
	second := doc.Services[1]
	if second["last_used"] != nil || second["from_host"] != "" || second["action_required"] != "" || second["note"] != "not used" {
		t.Errorf("never-used row %v, want last_used null, empty hosts and action, note \"not used\"", second)
	}

	// It reads back into the same report.
	var back StatusReport
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normalise(back), normalise(rep)) {
		t.Errorf("round trip\n got %+v\nwant %+v", back, rep)
	}

	// A complete report still has an (empty) action list, never null.
	b, _ = json.Marshal(BuildStatus(nil, statusNow, 0))
	if !bytes.Contains(b, []byte(`"action_required":[]`)) || !bytes.Contains(b, []byte(`"switch_complete":true`)) {
		t.Errorf("empty report %s", b)
	}
}

// normalise drops time zones (UTC vs Local representations) for comparison.
func normalise(r StatusReport) StatusReport {
	r.GeneratedAt = r.GeneratedAt.UTC()
	rows := make([]StatusRow, len(r.Services))
	for i, s := range r.Services {
		if !s.LastUsed.IsZero() {
			s.LastUsed = s.LastUsed.UTC()
		}
		rows[i] = s
	}
	r.Services = rows
	return r
}

func sortedKeys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestStatusHTMLEscapes(t *testing.T) {
	evil := `<script>alert("x")</script>.klarna.com`
	rep := BuildStatus([]Usage{
		used(Checkout, evil, `"><img src=x onerror=alert(1)>`, time.Minute),
		used(Unmatched, LocalHost, `a&b<i>`, time.Minute),
	}, statusNow, 0)
	var buf bytes.Buffer
	if err := renderStatusHTML(&buf, rep); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	for _, raw := range []string{"<script", "<img", "<i>", `onerror=alert(1)>`} {
		if strings.Contains(page, raw) {
			t.Errorf("page contains unescaped %q", raw)
		}
	}
	for _, esc := range []string{"&lt;script&gt;", "&lt;img src=x", "a&amp;b&lt;i&gt;"} {
		if !strings.Contains(page, esc) {
			t.Errorf("page lacks escaped %q", esc)
		}
	}
}

func TestStatusHTMLContent(t *testing.T) {
	rep := BuildStatus([]Usage{
		used(Checkout, "api.klarna.com", KustomProduction, 3*time.Minute),
		used(Settlement, LocalHost, KustomProduction, 2*time.Hour),
	}, statusNow, 0)
	var buf bytes.Buffer
	if err := renderStatusHTML(&buf, rep); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	for _, want := range []string{
		`<meta name="viewport"`, `<caption>`, `<th scope="col">Service</th>`, `<th scope="col">Host called</th>`,
		`<th scope="col">Sent to</th>`, `<th scope="col">Last used</th>`, `<th scope="col">Action required</th>`,
		`<th scope="row">Checkout</th>`, `<th scope="row">Order management</th>`, `<th scope="row">Hosted payment page</th>`,
		`<th scope="row">Customer token</th>`, `<th scope="row">Settlement</th>`,
		`id="action-required"`, "Some services are still using Klarna endpoints",
		`<time datetime="2026-03-01T11:57:00Z">2026-03-01 11:57:00 UTC</time>`, "3 minutes ago", "2 hours ago",
		"Not used", "the shim's own address",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, "All services use Kustom endpoints") {
		t.Error("page shows the success message while action is required")
	}
	for _, banned := range []string{"<script", "http://", "https://fonts", "@import", "url("} {
		if strings.Contains(strings.ReplaceAll(page, "https://api.kustom.co", ""), banned) {
			t.Errorf("page has %q: it must be self-contained", banned)
		}
	}

	buf.Reset()
	if err := renderStatusHTML(&buf, BuildStatus([]Usage{used(Checkout, KustomProduction, KustomProduction, time.Minute)}, statusNow, 0)); err != nil {
		t.Fatal(err)
	}
	page = buf.String()
	if !strings.Contains(page, "All services use Kustom endpoints") || !strings.Contains(page, "Traffic still flows through the shim") {
		t.Errorf("complete page lacks the success message or the shim note:\n%s", page)
	}
	if strings.Contains(page, `id="action-required"`) {
		t.Error("complete page shows the action section")
	}

	buf.Reset()
	if err := renderStatusHTML(&buf, BuildStatus(nil, statusNow, 24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if page = buf.String(); !strings.Contains(page, "No traffic went through the shim in the last 1 day: it can be removed") {
		t.Errorf("idle page lacks the removable note")
	}
}

// The CSP allows the inline style by hash; the hash must be that of the
// style element as served.
func TestStatusCSPMatchesStyle(t *testing.T) {
	var buf bytes.Buffer
	if err := renderStatusHTML(&buf, BuildStatus(nil, statusNow, 0)); err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(buf.String(), "<style>")
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
	app := &App{tracker: NewTracker()}
	app.tracker.Touch(UsageKey{Checkout, "api.klarna.com", KustomProduction}, time.Now().Add(-time.Minute))
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
	if rep.SwitchComplete || len(rep.Services) != 5 || rep.Services[0].FromHost != "api.klarna.com" {
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
	if !strings.Contains(rec.Body.String(), "Some services are still using Klarna endpoints") {
		t.Error("HTML lacks the action section")
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

func TestHumanAndRelativeTime(t *testing.T) {
	for d, want := range map[time.Duration]string{
		7 * 24 * time.Hour: "7 days", 24 * time.Hour: "1 day", 36 * time.Hour: "36 hours",
		time.Hour: "1 hour", 90 * time.Minute: "90 minutes", 90 * time.Second: "1m30s",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
	for ago, want := range map[time.Duration]string{
		-time.Hour: "just now", 30 * time.Second: "just now", time.Minute: "1 minute ago", 3 * time.Minute: "3 minutes ago",
		time.Hour: "1 hour ago", 47 * time.Hour: "47 hours ago", 48 * time.Hour: "2 days ago", 30 * 24 * time.Hour: "30 days ago",
	} {
		if got := relativeTime(statusNow.Add(-ago), statusNow); got != want {
			t.Errorf("relativeTime(-%v) = %q, want %q", ago, got, want)
		}
	}
}
