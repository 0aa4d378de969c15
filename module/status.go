package module

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(StatusHandler{})
}

// DefaultStatusWindow is how long a call on a Klarna host keeps a service in
// "Action required". A week, so that weekly jobs (settlement reports, batch
// captures, a Monday reconciliation) have run at least once on their new
// configuration before the switch counts as complete. The Prometheus rules in
// deploy/prometheus use the same 7 days.
const DefaultStatusWindow = 7 * 24 * time.Hour

// StatusRow is one line of the status report: a service called on one host
// and sent to another, or a service never seen at all (empty hosts, zero
// LastUsed).
type StatusRow struct {
	Service  Service
	FromHost string
	ToHost   string
	// LastUsed is zero when the service was never seen.
	LastUsed time.Time
	// ActionRequired is what to change, or "" when nothing is required.
	ActionRequired string
	// Note explains a row that needs no action but is worth knowing about.
	Note string
}

// NeedsAction tells whether the row keeps the switch from being complete.
func (r StatusRow) NeedsAction() bool { return r.ActionRequired != "" }

// StatusReport is the switch status, as the Kustom Portal's Integrations →
// API page shows it, built from what the shim has forwarded.
type StatusReport struct {
	// GeneratedAt is the time the report describes (UTC, whole seconds).
	GeneratedAt time.Time
	// Window is how recent a call must be to count as in use.
	Window time.Duration
	// SwitchComplete: no row needs action.
	SwitchComplete bool
	// ShimInUse: some row was used within Window, whatever its host. After
	// the switch this tells whether the shim can be removed yet.
	ShimInUse bool
	// ActionRequired lists the rows that need action, each as
	// "<service name>: <action>", in row order.
	ActionRequired []string
	// Services are the rows: Services' order, then unmatched or unknown
	// services; within one service by from-host, then to-host.
	Services []StatusRow
}

// Display names of the services, as the Kustom Portal writes them.
var serviceNames = map[Service]string{
	Checkout:          "Checkout",
	OrderManagement:   "Order management",
	Settlement:        "Settlement",
	HostedPaymentPage: "Hosted payment page",
	CustomerToken:     "Customer token",
	Unmatched:         "Other (not a Kustom API)",
}

// DisplayName is the service's human name ("Order management").
func (s Service) DisplayName() string {
	if n, ok := serviceNames[s]; ok {
		return n
	}
	return string(s)
}

// isKustomService tells whether s is one of the APIs Kustom took over.
func isKustomService(s Service) bool {
	for _, k := range Services {
		if k == s {
			return true
		}
	}
	return false
}

// BuildStatus turns last-used state into the status report at now. A row
// needs action when a Kustom service was called on a Klarna host within
// window (DefaultStatusWindow when window is not positive). Every service in
// Services gets at least one row; unmatched and unknown services appear only
// when seen, and never need action: they are not Kustom APIs, so moving apps
// to Kustom does not make them stop.
func BuildStatus(us []Usage, now time.Time, window time.Duration) StatusReport {
	if window <= 0 {
		window = DefaultStatusWindow
	}
	now = now.UTC().Truncate(time.Second)
	latest := make(map[UsageKey]time.Time, len(us))
	for _, u := range us {
		if prev, ok := latest[u.UsageKey]; !ok || u.LastUsed.After(prev) {
			latest[u.UsageKey] = u.LastUsed
		}
	}
	rep := StatusReport{GeneratedAt: now, Window: window, ActionRequired: []string{}}
	seen := map[Service]bool{}
	for k, t := range latest {
		seen[k.Service] = true
		if !t.IsZero() {
			t = t.UTC().Truncate(time.Second)
		}
		rep.Services = append(rep.Services, statusRow(k, t, now, window))
	}
	for _, s := range Services {
		if !seen[s] {
			rep.Services = append(rep.Services, StatusRow{Service: s, Note: "not used"})
		}
	}
	sortRows(rep.Services)
	rep.SwitchComplete = true
	for _, r := range rep.Services {
		if r.NeedsAction() {
			rep.SwitchComplete = false
			rep.ActionRequired = append(rep.ActionRequired, r.Service.DisplayName()+": "+r.ActionRequired)
		}
		if recent(r.LastUsed, now, window) {
			rep.ShimInUse = true
		}
	}
	return rep
}

// recent tells whether t is within window of now. A time after now (another
// instance's clock running ahead) is recent.
func recent(t, now time.Time, window time.Duration) bool {
	return !t.IsZero() && now.Sub(t) <= window
}

func statusRow(k UsageKey, t, now time.Time, window time.Duration) StatusRow {
	r := StatusRow{Service: k.Service, FromHost: k.FromHost, ToHost: k.ToHost, LastUsed: t}
	target := k.ToHost
	if target == "" {
		target = KustomProduction
		if strings.Contains(k.FromHost, ".playground.") {
			target = KustomPlayground
		}
	}
	switch {
	case t.IsZero():
		r.Note = "not used"
	case !isKustomService(k.Service):
		r.Note = fmt.Sprintf("not a Kustom API (for example Klarna Payments), so switching to Kustom does not stop "+
			"these calls: point the app at https://%s directly before removing the shim", target)
	case IsKlarnaHost(k.FromHost):
		if recent(t, now, window) {
			r.ActionRequired = fmt.Sprintf("Switch the app calling %s to https://%s (its base URL) and to Kustom API keys "+
				"(Kustom Portal → Integrations → Generate new), then remove the shim", k.FromHost, target)
		} else {
			r.Note = "not called on a Klarna host for more than " + humanDuration(window)
		}
	case k.FromHost == LocalHost:
		r.Note = fmt.Sprintf("reaches Kustom through the shim: set the app's base URL to https://%s and its keys "+
			"to Kustom keys before removing the shim", target)
	case k.FromHost == k.ToHost:
		r.Note = fmt.Sprintf("already calls %s, but through the shim (DNS or a proxy sends it here): "+
			"let it reach https://%s directly before removing the shim", k.FromHost, target)
	default:
		r.Note = fmt.Sprintf("the shim maps %s to %s: set the app's base URL to https://%s before removing the shim",
			k.FromHost, k.ToHost, target)
	}
	return r
}

func sortRows(rows []StatusRow) {
	rank := map[Service]int{}
	for i, s := range Services {
		rank[s] = i
	}
	rankOf := func(s Service) int {
		if r, ok := rank[s]; ok {
			return r
		}
		if s == Unmatched {
			return len(Services)
		}
		return len(Services) + 1
	}
	sort.Slice(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if ra, rb := rankOf(a.Service), rankOf(b.Service); ra != rb {
			return ra < rb
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.FromHost != b.FromHost {
			return a.FromHost < b.FromHost
		}
		return a.ToHost < b.ToHost
	})
}

// humanDuration writes a window the way people say it: "7 days", "24 hours"
// only when it is whole days or hours, else Go's form ("90m0s").
func humanDuration(d time.Duration) string {
	plural := func(n int64, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return strconv.FormatInt(n, 10) + " " + unit + "s"
	}
	switch {
	case d > 0 && d%(24*time.Hour) == 0:
		return plural(int64(d/(24*time.Hour)), "day")
	case d > 0 && d%time.Hour == 0:
		return plural(int64(d/time.Hour), "hour")
	case d > 0 && d%time.Minute == 0:
		return plural(int64(d/time.Minute), "minute")
	}
	return d.String()
}

// relativeTime is t as seen from now: "just now", "3 minutes ago", "2 days ago".
func relativeTime(t, now time.Time) string {
	d := now.Sub(t)
	plural := func(n int64, unit string) string {
		if n == 1 {
			return "1 " + unit + " ago"
		}
		return strconv.FormatInt(n, 10) + " " + unit + "s ago"
	}
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return plural(int64(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return plural(int64(d/time.Hour), "hour")
	default:
		return plural(int64(d/(24*time.Hour)), "day")
	}
}

// The JSON form of the report, which the status page (?format=json), the
// admin API (GET /kustom/status) and `kustom-shim kustom-status` share. Keys
// are always present; only last_used may be null.
//
//	{
//	  "switch_complete": false,          // no row needs action
//	  "shim_in_use": true,               // some row was used within window
//	  "window": "168h0m0s",              // Go duration
//	  "generated_at": "2026-03-01T12:00:00Z",
//	  "action_required": ["Checkout: Switch the app calling api.klarna.com to https://api.kustom.co …"],
//	  "services": [
//	    {
//	      "service": "checkout",         // metrics label: checkout, order_management, settlement,
//	                                     // hosted_payment_page, customer_token, unmatched
//	      "service_name": "Checkout",
//	      "from_host": "api.klarna.com", // host the app called, "local" for the shim itself, "" if never used
//	      "to_host": "api.kustom.co",    // host the shim sent it to, "" if never used
//	      "last_used": "2026-03-01T11:57:00Z", // RFC 3339, null if never used
//	      "action_required": "Switch the app calling api.klarna.com to …", // "" when none
//	      "note": ""                     // "not used", or why a row without action matters
//	    }
//	  ]
//	}
type statusReportJSON struct {
	SwitchComplete bool            `json:"switch_complete"`
	ShimInUse      bool            `json:"shim_in_use"`
	Window         string          `json:"window"`
	GeneratedAt    time.Time       `json:"generated_at"`
	ActionRequired []string        `json:"action_required"`
	Services       []statusRowJSON `json:"services"`
}

type statusRowJSON struct {
	Service        Service    `json:"service"`
	ServiceName    string     `json:"service_name"`
	FromHost       string     `json:"from_host"`
	ToHost         string     `json:"to_host"`
	LastUsed       *time.Time `json:"last_used"`
	ActionRequired string     `json:"action_required"`
	Note           string     `json:"note"`
}

// MarshalJSON writes the report in the documented shape above.
func (r StatusReport) MarshalJSON() ([]byte, error) {
	out := statusReportJSON{
		SwitchComplete: r.SwitchComplete,
		ShimInUse:      r.ShimInUse,
		Window:         r.Window.String(),
		GeneratedAt:    r.GeneratedAt.UTC(),
		ActionRequired: r.ActionRequired,
		Services:       make([]statusRowJSON, 0, len(r.Services)),
	}
	if out.ActionRequired == nil {
		out.ActionRequired = []string{}
	}
	for _, row := range r.Services {
		out.Services = append(out.Services, row.toJSON())
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads the documented shape (for the CLI and tests).
func (r *StatusReport) UnmarshalJSON(b []byte) error {
	var in statusReportJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	w, err := time.ParseDuration(in.Window)
	if err != nil {
		return fmt.Errorf("window: %v", err)
	}
	*r = StatusReport{GeneratedAt: in.GeneratedAt, Window: w, SwitchComplete: in.SwitchComplete,
		ShimInUse: in.ShimInUse, ActionRequired: in.ActionRequired}
	for _, row := range in.Services {
		sr := StatusRow{Service: row.Service, FromHost: row.FromHost, ToHost: row.ToHost,
			ActionRequired: row.ActionRequired, Note: row.Note}
		if row.LastUsed != nil {
			sr.LastUsed = *row.LastUsed
		}
		r.Services = append(r.Services, sr)
	}
	return nil
}

// MarshalJSON writes one row as in the report.
func (r StatusRow) MarshalJSON() ([]byte, error) { return json.Marshal(r.toJSON()) }

func (r StatusRow) toJSON() statusRowJSON {
	j := statusRowJSON{Service: r.Service, ServiceName: r.Service.DisplayName(), FromHost: r.FromHost,
		ToHost: r.ToHost, ActionRequired: r.ActionRequired, Note: r.Note}
	if !r.LastUsed.IsZero() {
		t := r.LastUsed.UTC()
		j.LastUsed = &t
	}
	return j
}

// writeStatusJSON sends the report as indented JSON.
func writeStatusJSON(w http.ResponseWriter, rep StatusReport) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(append(b, '\n'))
	return err
}

// StatusHandler serves the switch status page: which services still call
// Klarna hosts and what to change, like the Kustom Portal's Integrations →
// API page but from the calls this shim (and its fleet, through shared
// storage) has forwarded. HTML for browsers; JSON with Accept:
// application/json or ?format=json. It is terminal: it never calls the next
// handler. Put it on a path, such as `kustom_status /kustom/status`, and keep
// that path away from the internet if host names are sensitive.
type StatusHandler struct {
	// How recent a call on a Klarna host must be for its service to show
	// "Action required". Default: 7 days, so that weekly jobs (settlement
	// reports, batch captures) have run once on their new configuration
	// before the switch counts as complete; the same window the Prometheus
	// rules use.
	Window caddy.Duration `json:"window,omitempty"`

	app *App
}

// CaddyModule returns the Caddy module information.
func (StatusHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.kustom_status",
		New: func() caddy.Module { return new(StatusHandler) },
	}
}

// Provision finds the kustom app, starting it if no other module did.
func (h *StatusHandler) Provision(ctx caddy.Context) error {
	if h.Window < 0 {
		return fmt.Errorf("window: must not be negative")
	}
	if h.Window == 0 {
		h.Window = caddy.Duration(DefaultStatusWindow)
	}
	app, err := ctx.App("kustom")
	if err != nil {
		return err
	}
	h.app = app.(*App)
	return nil
}

// ServeHTTP answers GET and HEAD with the report.
func (h *StatusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusMethodNotAllowed)
		_, err := io.WriteString(w, "405 method not allowed: the status page answers GET and HEAD\n")
		return err
	}
	w.Header().Add("Vary", "Accept")
	rep := BuildStatus(h.app.Usage(), time.Now(), time.Duration(h.Window))
	if wantsJSON(r) {
		return writeStatusJSON(w, rep)
	}
	var buf bytes.Buffer
	if err := renderStatusHTML(&buf, rep); err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("Content-Security-Policy", statusCSP)
	hdr.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(buf.Bytes())
	return err
}

// wantsJSON reads ?format=json|html, else the Accept header: JSON when
// application/json has a higher quality than text/html, or the same quality
// from a more specific media range (application/json against */*). A tie, a
// missing header or an unreadable one means HTML.
func wantsJSON(r *http.Request) bool {
	switch strings.ToLower(r.URL.Query().Get("format")) {
	case "json":
		return true
	case "html":
		return false
	}
	jq, js := acceptQuality(r.Header.Values("Accept"), "application", "json")
	hq, hs := acceptQuality(r.Header.Values("Accept"), "text", "html")
	if jq <= 0 {
		return false
	}
	return jq > hq || (jq == hq && js > hs)
}

// acceptQuality returns the quality the Accept header gives type/subtype and
// the specificity of the range that gave it (3 exact, 2 type/*, 1 */*, 0 no
// match), per RFC 9110 section 12.5.1.
func acceptQuality(accept []string, typ, sub string) (q float64, specificity int) {
	for _, line := range accept {
		for _, part := range strings.Split(line, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			mt, params, err := mime.ParseMediaType(part)
			if err != nil {
				continue
			}
			t, s, ok := strings.Cut(mt, "/")
			if !ok {
				continue
			}
			spec := 0
			switch {
			case t == typ && s == sub:
				spec = 3
			case t == typ && s == "*":
				spec = 2
			case t == "*" && s == "*":
				spec = 1
			default:
				continue
			}
			pq := 1.0
			if v, ok := params["q"]; ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil || f < 0 || f > 1 {
					continue
				}
				pq = f
			}
			if spec > specificity {
				q, specificity = pq, spec
			}
		}
	}
	return q, specificity
}

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Parse(statusHTML))

// statusCSP allows nothing but the page's own inline style (by its hash),
// which also shows that the page needs no network beyond itself.
var statusCSP = func() string {
	_, rest, ok1 := strings.Cut(statusHTML, "<style>")
	css, _, ok2 := strings.Cut(rest, "</style>")
	if !ok1 || !ok2 {
		panic("status.html: no <style> element")
	}
	sum := sha256.Sum256([]byte(css))
	return "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) +
		"'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// displayTime is how the page writes a time for people; <time datetime>
// holds the RFC 3339 form.
const displayTime = "2006-01-02 15:04:05 UTC"

type statusView struct {
	Complete        bool
	ShimInUse       bool
	GeneratedAt     string // RFC 3339, for <time datetime>
	GeneratedAtText string // for people
	WindowText      string
	Actions         []statusRowView
	Rows            []statusRowView
	RecentCount     int
}

type statusRowView struct {
	Name, FromHost, ToHost string
	Local                  bool
	LastUsed, LastUsedText string // RFC 3339; for people
	Ago                    string
	Action, Note           string
}

// renderStatusHTML writes the page for rep; relative times are from
// rep.GeneratedAt.
func renderStatusHTML(w io.Writer, rep StatusReport) error {
	v := statusView{
		Complete:        rep.SwitchComplete,
		ShimInUse:       rep.ShimInUse,
		GeneratedAt:     rep.GeneratedAt.UTC().Format(time.RFC3339),
		GeneratedAtText: rep.GeneratedAt.UTC().Format(displayTime),
		WindowText:      humanDuration(rep.Window),
	}
	for _, r := range rep.Services {
		rv := statusRowView{Name: r.Service.DisplayName(), FromHost: r.FromHost, ToHost: r.ToHost,
			Local: r.FromHost == LocalHost, Action: r.ActionRequired, Note: r.Note}
		if !r.LastUsed.IsZero() {
			rv.LastUsed = r.LastUsed.UTC().Format(time.RFC3339)
			rv.LastUsedText = r.LastUsed.UTC().Format(displayTime)
			rv.Ago = relativeTime(r.LastUsed, rep.GeneratedAt)
			if recent(r.LastUsed, rep.GeneratedAt, rep.Window) {
				v.RecentCount++
			}
		} else {
			rv.Note = "" // the Last used column already says "Not used"
		}
		v.Rows = append(v.Rows, rv)
		if r.NeedsAction() {
			v.Actions = append(v.Actions, rv)
		}
	}
	return statusTemplate.Execute(w, v)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*StatusHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*StatusHandler)(nil)
	_ json.Marshaler              = StatusReport{}
	_ json.Unmarshaler            = (*StatusReport)(nil)
)
