package module

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(StatusHandler{})
}

// StatusHandler serves the switch status page: like the Kustom Portal's
// Integrations → API page, but it tells which store and which app still
// depend on the shim, whether calls work, and whether there is enough
// evidence to say so. The evidence is this shim's and its peers' in shared
// storage, or, with prometheus, the whole fleet's history in Prometheus.
// HTML for browsers; JSON with Accept: application/json or ?format=json. It
// is terminal: it never calls the next handler. Put it on a path, such as
// `kustom_status /kustom/status`, and keep that path away from the internet:
// it names stores, hosts and client software.
type StatusHandler struct {
	// How far back evidence counts, and how long the shim must have been
	// observing before it may call the switch complete. Default: 7 days, so
	// that weekly jobs (settlement reports, batch captures) have run once
	// on their new configuration; the same window the Prometheus rules use.
	Window caddy.Duration `json:"window,omitempty"`

	// The base URL of a Prometheus server that scrapes every kustom-shim
	// instance (http://prometheus:9090). The report is then built from
	// Prometheus' history across the whole fleet, so that sidecars agree
	// on one answer and a pod restart forgets nothing. When Prometheus
	// cannot be read the page says so with 503; it never falls back to the
	// local evidence, which knows only this instance.
	Prometheus string `json:"prometheus,omitempty"`

	// Label matchers that narrow every Prometheus query to this fleet, such
	// as job="kustom-shim",namespace="shop": a staging shim scraped by the
	// same Prometheus must lend production no evidence.
	PrometheusMatch string `json:"prometheus_match,omitempty"`

	app  *App
	prom *PrometheusSource
}

// CaddyModule returns the Caddy module information.
func (StatusHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.kustom_status",
		New: func() caddy.Module { return new(StatusHandler) },
	}
}

// Provision finds the kustom app, starting it if no other module did, or
// the Prometheus server.
func (h *StatusHandler) Provision(ctx caddy.Context) error {
	if h.Window < 0 {
		return fmt.Errorf("window: must not be negative")
	}
	if h.Window == 0 {
		h.Window = caddy.Duration(DefaultStatusWindow)
	}
	if h.Prometheus != "" {
		p, err := NewPrometheusSource(h.Prometheus)
		if err != nil {
			return err
		}
		if h.prom, err = p.WithMatch(h.PrometheusMatch); err != nil {
			return err
		}
		return nil
	}
	if h.PrometheusMatch != "" {
		return fmt.Errorf("prometheus_match: goes with prometheus")
	}
	app, err := ctx.App("kustom")
	if err != nil {
		return err
	}
	h.app = app.(*App)
	return nil
}

// report is the current report and the status code to send it with.
func (h *StatusHandler) report(r *http.Request) (StatusReport, int) {
	if h.prom != nil {
		rep := h.prom.Report(r.Context(), time.Now(), time.Duration(h.Window))
		if rep.Verdict == VerdictUnavailable {
			return rep, http.StatusServiceUnavailable
		}
		return rep, http.StatusOK
	}
	return h.app.Report(time.Now(), time.Duration(h.Window)), http.StatusOK
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
	rep, code := h.report(r)
	if wantsJSON(r) {
		return writeStatusJSON(w, code, rep)
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
	w.WriteHeader(code)
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

// Interface guards
var (
	_ caddy.Provisioner           = (*StatusHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*StatusHandler)(nil)
)
