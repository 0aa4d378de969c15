package module

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(AdminStatus{})
}

// AdminStatus adds GET /kustom/status to Caddy's admin API (by default on
// localhost:2019): the switch status as JSON, for `kustom-shim kustom-status`
// and for scripts, without putting a status page on a site. Like every admin
// module it is present whenever the admin API is on; it needs no config.
//
//	GET /kustom/status             window of 7 days (DefaultStatusWindow)
//	GET /kustom/status?window=24h  any caddy.ParseDuration form: 90m, 24h, 7d
//
// 200 with the report as JSON, in the shape documented in reportjson.go:
// the verdict and its summary, switch_complete, shim_in_use, the evidence
// (observing since, enough, calls seen), action_required by store and
// services[], one row per service, hosts, store and key with its state and
// evidence (last_used, last_ok, last_failed: RFC 3339 or null). Errors
// are the admin API's own JSON, {"error": "…"}: 400 for a bad window, 405 for
// a method other than GET or HEAD, 503 "kustom app not running" when the
// running config has no kustom app (no kustom handler, status page or global
// option).
type AdminStatus struct{}

// CaddyModule returns the Caddy module information.
func (AdminStatus) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.kustom",
		New: func() caddy.Module { return new(AdminStatus) },
	}
}

// AdminStatusPath is the admin API route.
const AdminStatusPath = "/kustom/status"

// Routes returns the /kustom/status route.
func (AdminStatus) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: AdminStatusPath, Handler: caddy.AdminHandlerFunc(handleAdminStatus)}}
}

func handleAdminStatus(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed,
			Err: fmt.Errorf("method %s not allowed: use GET", r.Method)}
	}
	window := DefaultStatusWindow
	if v := r.URL.Query().Get("window"); v != "" {
		d, err := caddy.ParseDuration(v)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest,
				Err: fmt.Errorf("window: %q is not a duration such as 24h or 7d", v)}
		}
		if d <= 0 {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest,
				Err: fmt.Errorf("window: %q must be positive", v)}
		}
		window = d
	}
	app := currentApp()
	if app == nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: errors.New("kustom app not running")}
	}
	return writeStatusJSON(w, http.StatusOK, app.Report(time.Now(), window))
}

// Interface guards
var _ caddy.AdminRouter = AdminStatus{}
