package module

import (
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The shim's view of a request goes into Caddy's own access log entry (its
// format, its outputs) as kustom_* fields, and into the requests counter.

func (rq *request) count(status int) {
	to := rq.toHost
	if to == "" {
		to = labelNone
	}
	shimMetrics.requests.WithLabelValues(string(rq.service), rq.route.FromHost, to, statusLabel(status)).Inc()
}

// logFields adds the shim's view of the request to the access log entry,
// once per request and only when the server keeps an access log: it runs on
// every request, and Caddy rebuilds its extra-field state on each change.
func (rq *request) logFields(refusal Reason) {
	if rq.extra == nil {
		return
	}
	if rq.logged {
		// Proxied, then refused (upstream down): only the reason is new.
		if refusal != "" {
			rq.extra.Add(zap.String("kustom_refusal", string(refusal)))
		}
		return
	}
	rq.logged = true
	rq.extra.Add(zap.Inline(shimLogFields{
		service: rq.service, from: rq.route.FromHost, to: rq.toHost, credential: rq.credential, refusal: refusal,
	}))
}

// shimLogFields are the access log's kustom_* fields.
type shimLogFields struct {
	service              Service
	from, to, credential string
	refusal              Reason
}

func (f shimLogFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("kustom_service", string(f.service))
	enc.AddString("kustom_from_host", f.from)
	if f.to != "" {
		enc.AddString("kustom_upstream", f.to)
	}
	if f.credential != "" {
		enc.AddString("kustom_credential", f.credential)
	}
	if f.refusal != "" {
		enc.AddString("kustom_refusal", string(f.refusal))
	}
	return nil
}

// extraFields is where the access log entry's extra fields go, or nil when
// this server writes no access log.
func extraFields(r *http.Request) *caddyhttp.ExtraLogFields {
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil && srv.Logs == nil {
		return nil
	}
	extra, _ := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	return extra
}
