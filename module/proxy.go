package module

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Upstream timeouts the shim sets when the transport block does not.
const (
	DefaultTLSHandshakeTimeout   = 10 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
)

// proxyRetries is how many times an idempotent request is tried again after
// a failure. Dial failures are always retried by Caddy (nothing was sent).
const proxyRetries = 2

// upstreamTarget is one place requests are proxied to.
type upstreamTarget struct {
	host string // Host header and TLS server name: the Kustom host
	dial string // host:port actually dialled
	tls  bool
}

// parseUpstreamOverride reads the `upstream` option: an https URL or a bare
// host:port. Only the dial address comes from it.
func parseUpstreamOverride(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	if !strings.Contains(raw, "://") {
		if _, _, err := net.SplitHostPort(raw); err != nil {
			return "", fmt.Errorf("upstream: not https://host:port or host:port")
		}
		return raw, nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("upstream: not a URL (want https://host:port or host:port)")
	}
	shown := u.Redacted()
	if u.Scheme != "https" {
		return "", fmt.Errorf("upstream: %q must use https: the shim sends Kustom credentials, which must not cross a network in clear text", shown)
	}
	if u.User != nil {
		return "", fmt.Errorf("upstream: %q may not carry credentials: the shim sends the configured Kustom ones", shown)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return "", fmt.Errorf("upstream: %q may not have a path or query: it only replaces the dial address", shown)
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "443"), nil
	}
	return u.Host, nil
}

// parsePassthrough reads `unmatched passthrough <url>`.
func parsePassthrough(raw string) (upstreamTarget, error) {
	if raw == "" {
		// The Caddyfile hands `unmatched passthrough` on without a URL for
		// this check, as a JSON config without "url" arrives.
		return upstreamTarget{}, fmt.Errorf("unmatched: passthrough needs a URL, such as `unmatched passthrough https://api.klarna.com`")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return upstreamTarget{}, fmt.Errorf("unmatched: the passthrough URL is not a URL such as https://api.klarna.com")
	}
	shown := u.Redacted()
	if u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return upstreamTarget{}, fmt.Errorf("unmatched: passthrough URL %q is not an http(s) URL such as https://api.klarna.com", shown)
	}
	if u.User != nil {
		return upstreamTarget{}, fmt.Errorf("unmatched: passthrough URL %q may not carry credentials: callers' own go through", shown)
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		return upstreamTarget{}, fmt.Errorf("unmatched: passthrough URL %q must use https: callers' credentials must not cross a network in clear text", shown)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return upstreamTarget{}, fmt.Errorf("unmatched: passthrough URL %q may not have a path or query", shown)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80"}[u.Scheme]
	}
	return upstreamTarget{host: u.Host, dial: net.JoinHostPort(u.Hostname(), port), tls: u.Scheme == "https"}, nil
}

// proxyPair is the two reverse proxies for one target, sharing one
// transport (one connection pool). Caddy replays a retried request's body
// only if it buffered it, so requests that may be retried with a body (those
// carrying Klarna-Idempotency-Key) go through a proxy that buffers request
// bodies up to maxBody; everything else streams through one that does not,
// and pays nothing for it. Without the buffer, a capture retried after a
// dropped connection would reach Kustom with an empty body.
type proxyPair struct {
	streaming *reverseproxy.Handler
	replay    *reverseproxy.Handler
}

// pick chooses the proxy for r.
func (p proxyPair) pick(r *http.Request) *reverseproxy.Handler {
	if r.ContentLength != 0 && len(r.Header["Klarna-Idempotency-Key"]) > 0 {
		return p.replay
	}
	return p.streaming
}

func (p proxyPair) cleanup() error {
	return errors.Join(p.streaming.Cleanup(), p.replay.Cleanup())
}

// newProxyPair configures Caddy's own reverse proxy for one target: TLS with
// the Kustom host as server name, pooled keep-alive connections, HTTP/2,
// responses streamed, and retries only for what is safe to repeat (GET,
// HEAD, Klarna-Idempotency-Key; Caddy retries failed dials of anything,
// since nothing was sent).
func newProxyPair(ctx caddy.Context, t upstreamTarget, transport json.RawMessage, maxBody int64) (proxyPair, error) {
	tr, err := transportFor(t, transport)
	if err != nil {
		return proxyPair{}, err
	}
	build := func(requestBuffers int64) (*reverseproxy.Handler, error) {
		rp := &reverseproxy.Handler{
			TransportRaw:   caddyconfig.JSONModuleObject(tr, "protocol", "http", nil),
			Upstreams:      reverseproxy.UpstreamPool{{Dial: t.dial}},
			RequestBuffers: requestBuffers,
			LoadBalancing: &reverseproxy.LoadBalancing{
				Retries:     proxyRetries,
				TryInterval: caddy.Duration(100 * time.Millisecond),
				RetryMatchRaw: caddyhttp.RawMatcherSets{
					{"method": json.RawMessage(`["GET","HEAD"]`)},
					{"header": json.RawMessage(`{"Klarna-Idempotency-Key":["*"]}`)},
				},
			},
			// The Kustom host, with no ":443": what Kustom's routing expects.
			// (The forwarding headers are kept out by stripForwarding.)
			Headers: &headers.Handler{Request: &headers.HeaderOps{
				Set: map[string][]string{"Host": {t.host}},
			}},
		}
		if err := rp.Provision(ctx); err != nil {
			return nil, fmt.Errorf("reverse proxy to %s: %v", t.host, err)
		}
		return rp, nil
	}
	streaming, err := build(0)
	if err != nil {
		return proxyPair{}, err
	}
	// +1: Caddy treats a body of exactly the buffer size as unfinished.
	replay, err := build(maxBody + 1)
	if err != nil {
		return proxyPair{}, err
	}
	replay.Transport = streaming.Transport
	return proxyPair{streaming: streaming, replay: replay}, nil
}

// transportFor is the user's `transport http` config with the TLS server
// name pinned to the target host (and TLS off for an http passthrough).
func transportFor(t upstreamTarget, transport json.RawMessage) (*reverseproxy.HTTPTransport, error) {
	var tr reverseproxy.HTTPTransport
	if len(transport) > 0 {
		var probe struct {
			Protocol string `json:"protocol"`
		}
		if err := json.Unmarshal(transport, &probe); err != nil {
			return nil, fmt.Errorf("transport: %v", err)
		}
		if probe.Protocol != "" && probe.Protocol != "http" {
			return nil, fmt.Errorf("transport: only the http transport can reach the Kustom API, not %q", probe.Protocol)
		}
		if err := json.Unmarshal(transport, &tr); err != nil {
			return nil, fmt.Errorf("transport: %v", err)
		}
		// For the same reason as an http:// upstream is refused: the shim
		// sends Kustom credentials (and passes on callers' own), and without
		// a certificate check anyone on the path could collect them. A
		// private CA belongs in tls_trust_pool.
		if tr.TLS != nil && tr.TLS.InsecureSkipVerify {
			return nil, fmt.Errorf("transport: tls_insecure_skip_verify (tls.insecure_skip_verify) is not allowed: " +
				"the shim sends Kustom credentials, which must only go to a server whose certificate is checked; " +
				"trust a private CA with tls_trust_pool instead")
		}
	}
	if t.tls {
		if tr.TLS == nil {
			tr.TLS = new(reverseproxy.TLSConfig)
		}
		tr.TLS.ServerName = hostOnly(t.host)
		if tr.TLS.HandshakeTimeout == 0 {
			tr.TLS.HandshakeTimeout = caddy.Duration(DefaultTLSHandshakeTimeout)
		}
	} else {
		tr.TLS = nil
	}
	// Caddy bounds the dial (3s) and idle connections (2m); nothing bounds
	// the wait for Kustom's answer unless we do. A settlement report may take
	// a while to start, hence a generous default.
	if tr.ResponseHeaderTimeout == 0 {
		tr.ResponseHeaderTimeout = caddy.Duration(DefaultResponseHeaderTimeout)
	}
	return &tr, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}
