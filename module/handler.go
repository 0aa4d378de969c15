// Package module holds kustom-shim's Caddy modules and the plain domain logic
// behind them: the Klarna → Kustom host map (hosts.go), service
// classification (services.go), credentials (credentials.go, proxyauth.go),
// URL rewriting (origins.go, bodyrewrite.go, responsewriter.go), the switch
// evidence and report (lastused.go, report.go, promreport.go), metrics and
// the status page. The kustom handler (this file) runs a request through
// named stages over those pieces and Caddy's own reverse proxy; connect.go
// intercepts CONNECT tunnels and drain.go hands connections over on reloads.
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
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
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
	// anything is sent. A body of unknown length (chunked) is read within
	// this limit first, and a request that may be retried (GET, HEAD, or
	// one with Klarna-Idempotency-Key) is held in memory so that a retry
	// sends it again whole; every other body streams.
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
	app         *App            // nil in unit tests; intercept_connect needs it
	usage       func() *Tracker // where calls are recorded
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
// target host, and records calls in the kustom app's tracker. Every error
// names the field at fault and never a secret.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := ctx.App("kustom")
	if err != nil {
		return err
	}
	h.app = app.(*App)
	return h.provision(ctx, h.app.Tracker)
}

// provision is Provision with the tracker given, so that the handler can be
// tested on its own, without a Caddy instance or the kustom app. usage is
// asked on every call: a reload may hand the app another tracker.
func (h *Handler) provision(ctx caddy.Context, usage func() *Tracker) error {
	h.logger = ctx.Logger()
	h.usage = usage
	registerMetrics(ctx.GetMetricsRegistry())
	if err := h.provisionLimits(); err != nil {
		return err
	}
	var err error
	if h.hosts, err = NewHostMap(h.Map, h.DefaultTarget); err != nil {
		return err
	}
	if h.creds, _, err = NewCredentialStore(ctx, h.Credentials, h.UnknownCredentials); err != nil {
		return err
	}
	if err := h.provisionConnect(ctx); err != nil {
		return err
	}
	if err := h.provisionProxies(ctx); err != nil {
		return err
	}
	return h.provisionUnmatched(ctx)
}

// provisionLimits checks and defaults the size limits.
func (h *Handler) provisionLimits() error {
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
	return nil
}

// provisionProxies builds one reverse proxy per Kustom host the map sends
// to, each with the Kustom host as Host and TLS server name.
func (h *Handler) provisionProxies(ctx caddy.Context) error {
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
	return nil
}

// provisionUnmatched sets up the policy for paths Kustom did not take over.
func (h *Handler) provisionUnmatched(ctx caddy.Context) error {
	if h.Unmatched == nil {
		return nil
	}
	switch h.Unmatched.Action {
	case "", "reject":
		if h.Unmatched.URL != "" {
			return fmt.Errorf("unmatched: a URL goes only with passthrough")
		}
		return nil
	case "passthrough":
	default:
		return fmt.Errorf("unmatched: %q is not one of reject, passthrough", h.Unmatched.Action)
	}
	t, err := parsePassthrough(h.Unmatched.URL)
	if err != nil {
		return err
	}
	// Dialled as configured (the upstream override is for Kustom hosts
	// only), through the same transport settings: a trust pool or an egress
	// proxy applies to every outbound call.
	rp, err := newProxyPair(ctx, t, h.TransportRaw, h.MaxRequestBody)
	if err != nil {
		return err
	}
	scheme := "http://"
	if t.tls {
		scheme = "https://"
	}
	h.passthrough = &proxyTarget{host: hostOnly(t.host), origin: scheme + t.host, rp: rp}
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

// ServeHTTP handles one request in stages, as Caddy's reverse proxy splits
// its own: admit (what no request may do), route (which upstream, which
// row), authorize (the caller's key), prepare (the body and headers), then
// forward (proxy and record) and answer. Each stage either passes or names
// the Reason the shim refuses with; nothing reaches an upstream before
// forward.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	rq := newRequest(r)
	if reason := h.admit(r, &rq); reason != "" {
		return h.refuse(w, &rq, reason)
	}
	if r.Method == http.MethodConnect {
		return h.serveConnect(w, r, &rq)
	}
	if reason := h.route(r, &rq); reason != "" {
		return h.refuse(w, &rq, reason)
	}
	if reason := h.authorize(r, &rq); reason != "" {
		return h.refuse(w, &rq, reason)
	}
	defer rq.auth.Release()
	if reason := h.prepare(r, &rq); reason != "" {
		return h.refuse(w, &rq, reason)
	}
	ow, err := h.forward(w, r, next, &rq)
	return h.answer(w, &rq, ow, err)
}

// request is what the handler learns about one request as it goes, for the
// later stages, the metrics and the access log.
type request struct {
	extra      *caddyhttp.ExtraLogFields
	repl       *caddy.Replacer
	service    Service
	route      Route
	toHost     string // "" until a target is chosen
	credential string
	detail     string // why the upstream failed, for a 502's error_messages
	logged     bool   // the access log fields were added

	target  *proxyTarget
	row     UsageKey // the switch report's row
	auth    AuthOutcome
	origins Origins      // the client origin is filled in only when a URL needs rewriting
	bodies  *bodyRewrite // nil: no body of this endpoint carries API URLs
}

func newRequest(r *http.Request) request {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	return request{extra: extraFields(r), repl: repl, service: Classify(r.URL.Path), route: Route{FromHost: labelUnknownHost}}
}

// admit refuses what no request may do, whatever its route. A CONNECT is
// admitted here (serveConnect authenticates it and checks its target) unless
// it comes inside a tunnel.
func (h *Handler) admit(r *http.Request, rq *request) Reason {
	if requestHeaderSize(r) > h.MaxRequestHeaders {
		return ReasonHeadersTooLarge
	}
	if len(r.Header["Upgrade"]) > 0 {
		// A 101 from the upstream would hand the client a raw pipe past
		// every check; no Klarna API upgrades.
		return ReasonUpgradeRefused
	}
	tunnel, inTunnel := tunnelHost(r)
	switch {
	case r.Method == http.MethodConnect:
		rq.service = Unmatched
		if inTunnel {
			return ReasonConnectRefused // no tunnel inside a tunnel
		}
		return ""
	case inTunnel:
		// The CONNECT that opened the tunnel was authenticated; a tunnel
		// serves the host it was opened for.
		if NormalizeHost(r.Host) != tunnel {
			return ReasonUnknownTarget
		}
		return ""
	}
	// proxy_auth guards every request of the site, not only proxy-form ones.
	return h.connect.proxyAuthorized(r)
}

// route picks the upstream and the switch report's row from the Host the
// app addressed and the path.
func (h *Handler) route(r *http.Request, rq *request) Reason {
	var route Route
	var ok bool
	if isProxyForm(r) {
		// An app using the shim as its HTTP proxy: only mapped API hosts,
		// never the default target, which serves requests for the shim.
		if route, ok = h.hosts.Lookup(r.Host); !ok {
			return ReasonProxyRefused
		}
	} else if route, ok = h.hosts.Resolve(r.Host); !ok {
		return ReasonUnknownTarget
	}
	rq.route = route
	rq.target = h.proxies[route.ToHost]
	rq.row = UsageKey{Service: rq.service, FromHost: route.FromHost, Key: KeyKept}
	if rq.service == Unmatched {
		if h.passthrough == nil {
			return ReasonUnmatchedPath
		}
		rq.target = h.passthrough
	}
	return ""
}

// authorize checks the caller's Klarna key and swaps in the Kustom one, and
// takes the credential's concurrency slot (ServeHTTP releases it). Calls
// passed through to a non-Kustom origin go with the caller's own
// credentials, unchecked.
func (h *Handler) authorize(r *http.Request, rq *request) Reason {
	if rq.target == h.passthrough {
		return ""
	}
	rq.auth = h.creds.Authenticate(r)
	rq.credential = rq.auth.Credential
	rq.auth.Count()
	if rq.auth.Result == ResultRejected {
		return rq.auth.Refusal
	}
	if rq.auth.Swap(r) {
		rq.row.Credential, rq.row.Key = rq.auth.Credential, KeySwapped
	}
	if !rq.auth.Acquire() {
		return ReasonTooManyRequests
	}
	return ""
}

// prepare bounds and rewrites the request body, notes a deprecated endpoint
// and strips what a third party has no business with.
func (h *Handler) prepare(r *http.Request, rq *request) Reason {
	if reason := limitRequestBody(r, h.MaxRequestBody); reason != "" {
		return reason
	}
	h.warnDeprecated(r, rq)
	rq.toHost = rq.target.host
	rq.logFields("")
	rq.origins = Origins{Upstream: rq.target.origin}
	if rq.target != h.passthrough {
		if rq.bodies = bodyRewriteFor(r.Method, r.URL.Path); rq.bodies != nil {
			rq.origins.Client = ClientOrigin(r)
			if reason := h.rewriteRequestBody(r, rq.bodies, rq.origins); reason != "" {
				return reason
			}
			if len(rq.bodies.response) > 0 && r.Header.Get("Accept-Encoding") != "" {
				// Ask only for an encoding the rewrite can read.
				r.Header.Set("Accept-Encoding", "gzip")
			}
		}
	}
	stripForwarding(r.Header)
	return ""
}

// warnDeprecated counts and logs a call to an endpoint Kustom deprecated.
func (h *Handler) warnDeprecated(r *http.Request, rq *request) {
	endpoint, ok := DeprecatedEndpoint(r.Method, r.URL.Path)
	if !ok || rq.service != OrderManagement {
		return
	}
	shimMetrics.deprecated.WithLabelValues(string(rq.service), endpoint).Inc()
	if c := h.logger.Check(zap.WarnLevel, "deprecated Kustom endpoint called; Kustom will remove it"); c != nil {
		c.Write(zap.String("endpoint", endpoint), zap.String("credential", rq.credential),
			zap.String("from_host", rq.route.FromHost))
	}
}

// forward proxies through Caddy's reverse proxy and records the call's
// evidence: used when sent, then worked or failed by its answer.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rq *request) (*originWriter, error) {
	start := time.Now()
	rq.row.ToHost = rq.target.host
	evidence := h.usage().Entry(rq.row)
	evidence.Used(start, r.Header.Get("User-Agent"))
	ow := newOriginWriter(w, rq.origins, rq.bodies, r)
	err := proxyInto(rq.target.rp.pick(r), ow, r, next)
	out := ow.outcome()
	if out.HeaderAt.IsZero() {
		out.HeaderAt = time.Now()
	}
	observeDuration(rq.service, out.HeaderAt.Sub(start).Seconds())
	recordOutcome(evidence, out, err, r)
	return ow, err
}

// answer finishes what forward began: a held-back body goes out rewritten,
// a failure before anything reached the client becomes the shim's refusal,
// and a stream that broke midway is aborted so the client sees it broke.
func (h *Handler) answer(w http.ResponseWriter, rq *request, ow *originWriter, err error) error {
	if err == nil {
		reason, notice := ow.finish()
		if notice != "" {
			h.noticeOnce(rq.bodies.endpoint+" response", notice)
		}
		if reason != "" {
			discardUpstreamHeaders(w.Header())
			return h.refuse(w, rq, reason)
		}
		rq.count(ow.outcome().Status)
		return nil
	}
	out := ow.outcome()
	reason := ReasonUpstreamUnreachable
	var herr caddyhttp.HandlerError
	switch {
	case out.TooLarge:
		reason = ReasonResponseTooLarge
	case errors.As(err, &herr) && herr.StatusCode == http.StatusGatewayTimeout:
		reason = ReasonUpstreamTimeout
	}
	rq.detail = upstreamFailureDetail(err, reason, rq.target.host)
	if c := h.logger.Check(zap.ErrorLevel, "upstream request failed"); c != nil {
		id, _ := rq.repl.GetString("http.request.uuid")
		c.Write(zap.String("service", string(rq.service)), zap.String("upstream", rq.target.host),
			zap.String("credential", rq.credential), zap.String("reason", string(reason)),
			zap.String("correlation_id", id), zap.String("cause", rq.detail), zap.Error(err))
	}
	if out.Started {
		// The response is under way: count it, then abort the stream as the
		// proxy meant to, so the client sees an incomplete body rather than
		// a clean end.
		rq.count(out.Status)
		if errors.Is(err, errStreamAborted) {
			panic(http.ErrAbortHandler)
		}
		return nil
	}
	discardUpstreamHeaders(w.Header())
	return h.refuse(w, rq, reason)
}

// recordOutcome records what the call's answer says about the upstream:
// worked, failed and why, or nothing when the client gave up before any
// answer (that says nothing about the upstream).
func recordOutcome(e *UsageEntry, out writeOutcome, err error, r *http.Request) {
	at := out.HeaderAt
	if out.Status != 0 && out.Status < 500 && err != nil && !out.TooLarge && r.Context().Err() == nil {
		// The upstream answered, then its body broke off (a reset or a
		// closed connection mid-stream): the app did not get the answer.
		e.Failed(at, FailureUnreachable)
		return
	}
	if out.Status != 0 {
		switch code := out.Status; {
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
				if ow.outcome().TooLarge {
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
// so that it is refused before anything is sent; a declared length is
// checked, and the body streams.
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
