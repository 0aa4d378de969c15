// Package module holds kustom-shim's Caddy modules and the plain domain logic
// behind them: the Klarna → Kustom host map, service classification,
// credential swapping, URL rewriting, metrics and the status page. The
// handlers are thin glue over those pieces and over Caddy's own reverse proxy.
package module

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler turns a legacy app's Klarna API calls into Kustom API calls: it
// picks the Kustom host from the Host the app addressed, checks the app's
// Klarna credentials and swaps in Kustom ones, and proxies through Caddy's
// reverse proxy. It is terminal: it never calls the next handler.
type Handler struct {
	// Where a request goes whose Host is neither a Klarna nor a Kustom API
	// host, such as a sidecar reached at localhost:8080: "production"
	// (api.kustom.co, the default), "playground" (api.playground.kustom.co)
	// or "none" (refuse such requests, for a gateway that must only serve
	// API hosts).
	DefaultTarget string `json:"default_target,omitempty"`

	// Adds to or overrides the built-in map of Klarna API hosts to Kustom
	// hosts (api[-na|-oc][.playground].klarna.com to api[.playground].kustom.co),
	// for example if the Kustom Merchant Portal gives a region-specific host.
	Map map[string]string `json:"map,omitempty"`

	// What to do with paths that are not a Kustom API (Klarna Payments,
	// unknown paths). Default: reject.
	Unmatched *UnmatchedPolicy `json:"unmatched,omitempty"`

	// The Klarna keys the shim accepts and the Kustom keys it sends instead.
	Credentials []Credential `json:"credentials,omitempty"`

	// What to do with a caller whose credentials match no configured Klarna
	// username: "reject" (default, 401 and nothing reaches Kustom) or "keep"
	// (send the caller's own Authorization unchanged, for accounts whose
	// Klarna keys Kustom accepts or apps that already send Kustom keys). A
	// known username with a wrong password is refused either way.
	UnknownCredentials string `json:"unknown_credentials,omitempty"`

	// The largest request body accepted, in bytes (default 1 MiB, Klarna's
	// and Kustom's own limit). A larger one is refused with 413 before
	// anything is sent. Bodies up to this size are held in memory so that a
	// retried request can be sent again whole.
	MaxRequestBody int64 `json:"max_request_body,omitempty"`

	// The largest request line plus headers accepted, in bytes (default 64
	// KiB; Klarna API calls send a few hundred). Larger requests get 431.
	MaxRequestHeaders int64 `json:"max_request_headers,omitempty"`

	// Overrides only the address dialled (https://host:port or host:port),
	// for tests or one more hop; the Host header and the TLS server name stay
	// the Kustom host, so certificate checks are unchanged.
	Upstream string `json:"upstream,omitempty"`

	// Caddy's HTTP transport options for the connection to Kustom (trust
	// pool, timeouts, forward proxy, keep-alive). The TLS server name is
	// always set to the Kustom host.
	TransportRaw json.RawMessage `json:"transport,omitempty" caddy:"namespace=http.reverse_proxy.transport inline_key=protocol"`

	// Accept `CONNECT <api-host>:443` from apps that honour HTTPS_PROXY but
	// cannot change their URLs or DNS: the shim terminates the tunnel's TLS
	// with a certificate from Caddy's internal CA (which the app must
	// trust) and serves the requests in it as requests for that host. A
	// CONNECT to any host outside the map is refused either way.
	InterceptConnect bool `json:"intercept_connect,omitempty"`

	// Requires Basic Proxy-Authorization on CONNECT and proxy-form
	// requests, for a gateway shared by many apps.
	ProxyAuth *ProxyAuth `json:"proxy_auth,omitempty"`

	hosts       *HostMap
	creds       *CredentialStore
	proxies     map[string]*proxyTarget // by to-host
	passthrough *proxyTarget
	logger      *zap.Logger
	app         *App
	connect     *connectIntercept
}

// UnmatchedPolicy is the policy for paths Kustom did not take over.
type UnmatchedPolicy struct {
	// "reject" (403 with reason unmatched_path) or "passthrough".
	Action string `json:"action,omitempty"`
	// With passthrough: the origin to send such requests to unchanged, with
	// the caller's own credentials, such as https://api.klarna.com.
	URL string `json:"url,omitempty"`
}

type proxyTarget struct {
	host   string // metrics and log label: where requests go
	origin string // https://host, the origin whose URLs are rewritten back
	rp     proxyPair
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.kustom",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets, builds the host map and one reverse proxy per
// target host. Every error names the field at fault and never a secret.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	app, err := ctx.App("kustom")
	if err != nil {
		return err
	}
	h.app = app.(*App)
	registerMetrics(ctx.GetMetricsRegistry())
	if h.MaxRequestBody < 0 {
		return fmt.Errorf("max_request_body: must not be negative")
	}
	if h.MaxRequestBody == 0 {
		h.MaxRequestBody = DefaultMaxRequestBody
	}
	if h.MaxRequestHeaders < 0 {
		return fmt.Errorf("max_request_headers: must not be negative")
	}
	if h.MaxRequestHeaders == 0 {
		h.MaxRequestHeaders = DefaultMaxRequestHeaders
	}
	if h.hosts, err = NewHostMap(h.Map, h.DefaultTarget); err != nil {
		return err
	}
	if h.creds, _, err = NewCredentialStore(ctx, h.Credentials, h.UnknownCredentials); err != nil {
		return err
	}
	if err := h.provisionConnect(ctx); err != nil {
		return err
	}
	dialOverride, err := parseUpstreamOverride(h.Upstream)
	if err != nil {
		return err
	}
	h.proxies = map[string]*proxyTarget{}
	for _, to := range h.hosts.ToHosts() {
		t := upstreamTarget{host: to, dial: to + ":443", tls: true}
		if dialOverride != "" {
			t.dial = dialOverride
		}
		rp, err := newProxyPair(ctx, t, h.TransportRaw, h.MaxRequestBody)
		if err != nil {
			return err
		}
		h.proxies[to] = &proxyTarget{host: to, origin: "https://" + to, rp: rp}
	}
	if h.Unmatched != nil {
		switch h.Unmatched.Action {
		case "", "reject":
			if h.Unmatched.URL != "" {
				return fmt.Errorf("unmatched: a URL goes only with passthrough")
			}
		case "passthrough":
			t, err := parsePassthrough(h.Unmatched.URL)
			if err != nil {
				return err
			}
			// Dialled as configured (the upstream override is for Kustom
			// hosts only), through the same transport settings: a trust
			// pool or an egress proxy applies to every outbound call.
			rp, err := newProxyPair(ctx, t, h.TransportRaw, h.MaxRequestBody)
			if err != nil {
				return err
			}
			scheme := "http://"
			if t.tls {
				scheme = "https://"
			}
			h.passthrough = &proxyTarget{host: hostOnly(t.host), origin: scheme + t.host, rp: rp}
		default:
			return fmt.Errorf("unmatched: %q is not one of reject, passthrough", h.Unmatched.Action)
		}
	}
	return nil
}

// Cleanup ends the tunnels this config opened and releases the reverse
// proxies' upstream connections.
func (h *Handler) Cleanup() error {
	h.connect.close()
	var errs []error
	for _, p := range h.proxies {
		errs = append(errs, p.rp.cleanup())
	}
	if h.passthrough != nil {
		errs = append(errs, h.passthrough.rp.cleanup())
	}
	return errors.Join(errs...)
}

// ServeHTTP routes, authenticates and proxies one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	rq := request{extra: extraFields(r), repl: repl, service: Classify(r.URL.Path), route: Route{FromHost: labelUnknownHost}}

	if requestHeaderSize(r) > h.MaxRequestHeaders {
		return h.refuse(w, &rq, ReasonHeadersTooLarge)
	}
	if len(r.Header["Upgrade"]) > 0 {
		// A 101 from the upstream would hand the client a raw pipe past
		// every check; no Klarna API upgrades.
		return h.refuse(w, &rq, ReasonUpgradeRefused)
	}
	tunnel, inTunnel := tunnelHost(r)
	if r.Method == http.MethodConnect {
		rq.service = Unmatched
		if inTunnel {
			return h.refuse(w, &rq, ReasonConnectRefused) // no tunnel inside a tunnel
		}
		return h.serveConnect(w, r, &rq)
	}
	if inTunnel && NormalizeHost(r.Host) != tunnel {
		return h.refuse(w, &rq, ReasonUnknownTarget) // a tunnel serves the host it was opened for
	}
	if !inTunnel {
		// proxy_auth guards every request of the site; inside a tunnel
		// the CONNECT that opened it was authenticated.
		if reason := h.connect.proxyAuthorized(r); reason != "" {
			return h.refuse(w, &rq, reason)
		}
	}
	var route Route
	var ok bool
	if isProxyForm(r) {
		// An app using the shim as its HTTP proxy: only mapped API hosts,
		// never the default target, which serves requests for the shim.
		if route, ok = h.hosts.Lookup(r.Host); !ok {
			return h.refuse(w, &rq, ReasonProxyRefused)
		}
	} else if route, ok = h.hosts.Resolve(r.Host); !ok {
		return h.refuse(w, &rq, ReasonUnknownTarget)
	}
	rq.route = route
	target := h.proxies[route.ToHost]
	row := UsageKey{Service: rq.service, FromHost: route.FromHost, Key: KeyKept}
	if rq.service == Unmatched {
		if h.passthrough == nil {
			return h.refuse(w, &rq, ReasonUnmatchedPath)
		}
		// Not Kustom's: the caller's own credentials go, unchecked.
		target = h.passthrough
	} else {
		auth := h.creds.Authenticate(r)
		rq.credential = auth.Credential
		auth.counter.Inc()
		switch auth.Result {
		case ResultRejected:
			return h.refuse(w, &rq, auth.Refusal)
		case ResultSwapped:
			// Safe to change in place: the access log holds its own clone
			// of the request, made before any handler ran.
			r.Header["Authorization"] = auth.stored.header
			row.Credential, row.Key = auth.Credential, KeySwapped
		}
		if auth.stored != nil && auth.stored.limit != nil {
			if !auth.stored.limit.acquire() {
				return h.refuse(w, &rq, ReasonTooManyRequests)
			}
			defer auth.stored.limit.release()
		}
	}
	if reason := limitRequestBody(r, h.MaxRequestBody); reason != "" {
		return h.refuse(w, &rq, reason)
	}
	if endpoint, ok := DeprecatedEndpoint(r.Method, r.URL.Path); ok && rq.service == OrderManagement {
		shimMetrics.deprecated.WithLabelValues(string(rq.service), endpoint).Inc()
		if c := h.logger.Check(zap.WarnLevel, "deprecated Kustom endpoint called; Kustom will remove it"); c != nil {
			c.Write(zap.String("endpoint", endpoint), zap.String("credential", rq.credential),
				zap.String("from_host", route.FromHost))
		}
	}
	rq.toHost = target.host
	rq.logFields("")

	// The client origin is worked out only when a URL needs rewriting.
	origins := Origins{Upstream: target.origin}
	var bodies *bodyRewrite
	if target != h.passthrough {
		if bodies = bodyRewriteFor(r.Method, r.URL.Path); bodies != nil {
			origins.Client = ClientOrigin(r)
			if reason := h.rewriteRequestBody(r, bodies, origins); reason != "" {
				return h.refuse(w, &rq, reason)
			}
			if len(bodies.response) > 0 && r.Header.Get("Accept-Encoding") != "" {
				// Ask only for an encoding the rewrite can read.
				r.Header.Set("Accept-Encoding", "gzip")
			}
		}
	}

	stripForwarding(r.Header)
	start := time.Now()
	row.ToHost = target.host
	evidence := h.app.Tracker().Entry(row)
	evidence.Used(start, r.Header.Get("User-Agent"))
	ow := newOriginWriter(w, origins, bodies, r)
	err := proxyInto(target.rp.pick(r), ow, r, next)
	headerAt := ow.headerAt
	if headerAt.IsZero() {
		headerAt = time.Now()
	}
	observeDuration(rq.service, headerAt.Sub(start).Seconds())
	recordOutcome(evidence, ow, err, r, headerAt)
	if err == nil {
		reason, notice := ow.finish()
		if notice != "" {
			h.noticeOnce(bodies.endpoint+" response", notice)
		}
		if reason != "" {
			discardUpstreamHeaders(w.Header())
			return h.refuse(w, &rq, reason)
		}
		rq.count(ow.status)
		return nil
	}
	reason := ReasonUpstreamUnreachable
	var herr caddyhttp.HandlerError
	switch {
	case ow.tooLarge:
		reason = ReasonResponseTooLarge
	case errors.As(err, &herr) && herr.StatusCode == http.StatusGatewayTimeout:
		reason = ReasonUpstreamTimeout
	}
	rq.detail = upstreamFailureDetail(err, reason, target.host)
	if c := h.logger.Check(zap.ErrorLevel, "upstream request failed"); c != nil {
		id, _ := rq.repl.GetString("http.request.uuid")
		c.Write(zap.String("service", string(rq.service)), zap.String("upstream", target.host),
			zap.String("credential", rq.credential), zap.String("reason", string(reason)),
			zap.String("correlation_id", id), zap.String("cause", rq.detail), zap.Error(err))
	}
	if ow.wroteHeader && !ow.buffering {
		// The response is under way: count it, then abort the stream as the
		// proxy meant to, so the client sees an incomplete body rather than
		// a clean end.
		rq.count(ow.status)
		if errors.Is(err, errStreamAborted) {
			panic(http.ErrAbortHandler)
		}
		return nil
	}
	discardUpstreamHeaders(w.Header())
	return h.refuse(w, &rq, reason)
}

// recordOutcome records what the call's answer says about the upstream:
// worked, failed and why, or nothing when the client gave up before any
// answer (that says nothing about the upstream).
func recordOutcome(e *UsageEntry, ow *originWriter, err error, r *http.Request, at time.Time) {
	if ow.wroteHeader {
		switch code := ow.status; {
		case code == http.StatusUnauthorized || code == http.StatusForbidden:
			e.Failed(at, FailureKeyRejected)
		case code >= 500:
			e.Failed(at, Failure5xx)
		default:
			e.OK(at)
		}
		return
	}
	var herr caddyhttp.HandlerError
	switch {
	case err == nil:
		e.OK(at) // an answer with no header written is net/http's implicit 200
	case r.Context().Err() != nil:
	case errors.As(err, &herr) && herr.StatusCode == http.StatusGatewayTimeout:
		e.Failed(at, FailureTimeout)
	default:
		e.Failed(at, FailureUnreachable)
	}
}

// stripForwarding keeps the app's network to itself: a third party has no
// business with its addresses or host names. Caddy's proxy adds no
// X-Forwarded-* header whose value is nil (httputil's convention), which
// costs three map writes; deleting them after Caddy added them, through
// header ops, cost ten allocations per request.
func stripForwarding(h http.Header) {
	h["X-Forwarded-For"] = nil
	h["X-Forwarded-Proto"] = nil
	h["X-Forwarded-Host"] = nil
	delete(h, "Forwarded")
	delete(h, "X-Real-Ip")
}

// discardUpstreamHeaders drops what the proxy copied from an upstream
// response that will not be sent (its Content-Length above all), keeping what
// the server itself set.
func discardUpstreamHeaders(h http.Header) {
	for k := range h {
		if k != "Server" && k != "Alt-Svc" {
			delete(h, k)
		}
	}
}

// proxyInto runs Caddy's reverse proxy. When a response body fails midway,
// the proxy aborts the stream with http.ErrAbortHandler; that panic becomes
// errStreamAborted here so that the handler can count and log the request
// (and, when nothing reached the client yet, still answer with a refusal)
// before passing the abort on.
func proxyInto(rp *reverseproxy.Handler, ow *originWriter, r *http.Request, next caddyhttp.Handler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				err = errStreamAborted
				if ow.tooLarge {
					err = errResponseTooLarge
				}
				return
			}
			panic(p)
		}
	}()
	return rp.ServeHTTP(ow, r, next)
}

var errStreamAborted = errors.New("upstream response aborted mid-body")

// rewriteRequestBody points the API URLs in a request body at the upstream:
// URLs on the client's origin (a sidecar's http://localhost:8080) and
// absolute Klarna API URLs the app has hard-coded. The body was already
// bounded by limitRequestBody.
func (h *Handler) rewriteRequestBody(r *http.Request, bodies *bodyRewrite, o Origins) Reason {
	if len(bodies.request) == 0 || r.Body == nil || r.Body == http.NoBody {
		return ""
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return ReasonBadRequestBody
	}
	out := body
	if enc := r.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		h.noticeOnce(bodies.endpoint+" request", "encoded request body ("+enc+") passed unchanged")
	} else {
		rewritten, _, err := RewriteJSONFields(body, bodies.request, func(u string) (string, bool) {
			if nu, ok := o.ToUpstream(u); ok {
				return nu, true
			}
			return h.hosts.RewriteToKustom(u)
		})
		if err != nil {
			h.noticeOnce(bodies.endpoint+" request", err.Error())
		} else {
			out = rewritten
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(out))
	r.ContentLength = int64(len(out))
	r.Header.Set("Content-Length", strconv.Itoa(len(out)))
	return ""
}

// noticed holds the notices already logged: a body that is not the JSON
// expected is logged once per endpoint and kind, not once per request.
var noticed sync.Map

func (h *Handler) noticeOnce(where, what string) {
	if _, seen := noticed.LoadOrStore(where, struct{}{}); seen {
		return
	}
	h.logger.Warn("body passed unchanged: not the JSON expected (logged once per endpoint)",
		zap.String("endpoint", where), zap.String("problem", what))
}

// request is what the handler learns about one request as it goes, for the
// metrics and the access log.
type request struct {
	extra      *caddyhttp.ExtraLogFields
	repl       *caddy.Replacer
	service    Service
	route      Route
	toHost     string // "" until a target is chosen
	credential string
	detail     string // why the upstream failed, for a 502's error_messages
	logged     bool   // the access log fields were added
}

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
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv.Logs == nil {
		return nil
	}
	extra, _ := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	return extra
}

// refuse answers the request itself; nothing reaches an upstream.
func (h *Handler) refuse(w http.ResponseWriter, rq *request, reason Reason) error {
	rq.logFields(reason)
	shimMetrics.refused.WithLabelValues(string(reason)).Inc()
	rq.count(reason.Status())
	id, _ := rq.repl.GetString("http.request.uuid")
	WriteRefusal(w, reason, id, rq.detail)
	return nil
}

// upstreamFailureDetail says in words why the upstream could not be used,
// for the 502's error_messages and the error log: a merchant who sees "DNS
// lookup of api.kustom.co failed" knows where to look. It names hosts and
// standard error texts only, never a request's contents.
func upstreamFailureDetail(err error, reason Reason, host string) string {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidErr x509.CertificateInvalidError
	// Caddy's DialError embeds its cause without Unwrap, so the error
	// chain stops there; its text still carries the standard messages.
	text := err.Error()
	switch {
	case reason == ReasonResponseTooLarge:
		return ""
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("DNS lookup of %s failed", dnsErr.Name)
	case strings.Contains(text, "no such host"), strings.Contains(text, "server misbehaving"):
		return fmt.Sprintf("DNS lookup of %s failed", host)
	case errors.Is(err, syscall.ECONNREFUSED), strings.Contains(text, "connection refused"):
		return fmt.Sprintf("the connection to %s was refused", host)
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr), errors.As(err, &invalidErr),
		strings.Contains(text, "tls: failed to verify certificate"), strings.Contains(text, "x509: "):
		return fmt.Sprintf("TLS verification of %s failed: its certificate is not trusted for that name (check the transport's trust pool)", host)
	case reason == ReasonUpstreamTimeout:
		return fmt.Sprintf("%s did not answer within the timeout", host)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		strings.Contains(text, "connection reset"):
		return fmt.Sprintf("the connection to %s was closed before an answer", host)
	}
	return fmt.Sprintf("%s could not be reached", host)
}

// isProxyForm reports a request in absolute form (GET http://host/path), as
// an app sends it to its HTTP proxy.
func isProxyForm(r *http.Request) bool {
	return r.RequestURI != "" && r.RequestURI[0] != '/' && r.RequestURI != "*"
}

// DefaultMaxRequestHeaders bounds what the shim forwards of a request's
// headers; Caddy's own server limit (max_header_size) defaults to 1 MiB.
const DefaultMaxRequestHeaders = 64 << 10

// requestHeaderSize is the size of the request line and header fields as
// they would be sent, without allocating.
func requestHeaderSize(r *http.Request) int64 {
	n := int64(len(r.Method) + len(r.RequestURI) + len(r.Host) + 16)
	for k, vs := range r.Header {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

// DefaultMaxRequestBody is Klarna's documented request body limit.
const DefaultMaxRequestBody = 1 << 20

// limitRequestBody refuses a body over max. A body of unknown length
// (chunked, or HTTP/2 without Content-Length) is read here, within the limit,
// so that it is refused before anything is sent and can be replayed on retry.
func limitRequestBody(r *http.Request, max int64) Reason {
	if r.ContentLength > max {
		return ReasonRequestTooLarge
	}
	if r.ContentLength >= 0 || r.Body == nil || r.Body == http.NoBody {
		return ""
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return ReasonBadRequestBody
	}
	if int64(len(buf)) > max {
		return ReasonRequestTooLarge
	}
	r.Body = io.NopCloser(bytes.NewReader(buf))
	r.ContentLength = int64(len(buf))
	r.Header.Set("Content-Length", strconv.Itoa(len(buf)))
	return ""
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
