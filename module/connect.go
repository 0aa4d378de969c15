package module

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

// An app that honours HTTPS_PROXY but cannot change its URLs or DNS sends
// `CONNECT api.klarna.com:443`. With intercept_connect the shim answers the
// TLS handshake inside that tunnel itself, with a certificate for the host
// from Caddy's internal CA (the one `tls internal` uses: no second CA), and
// serves the requests in it through the same Caddy server as a request
// addressed to api.klarna.com. It never opens a tunnel to anywhere: a CONNECT
// for a host outside the map is refused, so the shim is no open proxy.

// connectIntercept is the provisioned form of intercept_connect.
type connectIntercept struct {
	tlsConfig *tls.Config
	auth      *caddyauth.HTTPBasicAuth // nil: no proxy authentication
	logger    *zap.Logger

	// The tunnels this config opened. A tunnel is served by the config
	// that opened it (its credentials, its proxy_auth), so a reload must
	// end it: the app reconnects and meets the new config.
	mu      sync.Mutex
	tunnels map[*http.Server]struct{}
	closed  bool

	maxLifetime time.Duration // tunnelMaxLifetime; shorter in tests
}

// Timeouts for the connections inside a tunnel, which no Caddy server
// option covers: a client that opens a tunnel and goes quiet is dropped.
const (
	tunnelHandshakeTimeout = 10 * time.Second
	tunnelHeaderTimeout    = 30 * time.Second
	tunnelIdleTimeout      = 2 * time.Minute
	// tunnelDrainTimeout bounds how long a closing tunnel waits for the
	// call in flight before the connection is cut.
	tunnelDrainTimeout = 30 * time.Second
)

// tunnelMaxLifetime ends a busy tunnel too (its idle timer restarts on
// every call), so that no tunnel outlives a change that missed it by more
// than this. HTTP clients reconnect without the app noticing.
const tunnelMaxLifetime = 10 * time.Minute

// tunnelCtxKey marks a request that arrived inside an intercepted tunnel;
// its value is the host the tunnel was opened (and authorised) for. Only
// serveTunnel sets it, so a client cannot claim to be inside a tunnel.
type tunnelCtxKey struct{}

// tunnelHost is the host of the tunnel r arrived in, if any.
func tunnelHost(r *http.Request) (string, bool) {
	h, ok := r.Context().Value(tunnelCtxKey{}).(string)
	return h, ok
}

func (h *Handler) provisionConnect(ctx caddy.Context) error {
	if !h.InterceptConnect {
		if h.ProxyAuth != nil {
			return fmt.Errorf("proxy_auth: goes with intercept_connect")
		}
		return nil
	}
	auth, err := h.ProxyAuth.provision(ctx)
	if err != nil {
		return err
	}
	if h.app == nil {
		return fmt.Errorf("intercept_connect: needs the kustom app for its certificates")
	}
	tlsIface, err := ctx.App("tls")
	if err != nil {
		return fmt.Errorf("intercept_connect: loading the tls app: %v", err)
	}
	tlsApp := tlsIface.(*caddytls.TLS)
	hosts := h.hosts.FromHosts()
	// Certificates for every mapped host, from Caddy's internal CA; they are
	// issued when the config starts (not when it is only validated).
	ap := &caddytls.AutomationPolicy{
		SubjectsRaw: hosts,
		IssuersRaw:  []json.RawMessage{json.RawMessage(`{"module":"internal"}`)},
	}
	if err := tlsApp.AddAutomationPolicy(ap); err != nil {
		return fmt.Errorf("intercept_connect: certificates: %v", err)
	}
	h.app.manageOnStart(tlsApp, hosts)
	policies := caddytls.ConnectionPolicies{{ALPN: []string{"h2", "http/1.1"}}}
	if err := policies.Provision(ctx); err != nil {
		return fmt.Errorf("intercept_connect: %v", err)
	}
	h.connect = &connectIntercept{tlsConfig: policies.TLSConfig(ctx), logger: h.logger, auth: auth,
		tunnels: map[*http.Server]struct{}{}}
	return nil
}

// serveConnect answers a CONNECT: refused unless intercepting and the target
// is a mapped API host on port 443; otherwise the tunnel's TLS is terminated
// here and its requests served by this Caddy server.
func (h *Handler) serveConnect(w http.ResponseWriter, r *http.Request, rq *request) error {
	if h.connect == nil {
		return h.refuse(w, rq, ReasonConnectRefused)
	}
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil || port != "443" {
		return h.refuse(w, rq, ReasonConnectRefused)
	}
	route, ok := h.hosts.Lookup(host)
	if !ok {
		return h.refuse(w, rq, ReasonConnectRefused)
	}
	rq.route = Route{FromHost: route.FromHost}
	if reason := h.connect.proxyAuthorized(r); reason != "" {
		return h.refuse(w, rq, reason)
	}
	if r.ProtoMajor != 1 {
		// An HTTP/2 CONNECT stream cannot be hijacked; apps open their
		// proxy connections with HTTP/1.1.
		return h.refuse(w, rq, ReasonConnectRefused)
	}
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return h.refuse(w, rq, ReasonConnectRefused)
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("hijacking CONNECT: %v", err))
	}
	rq.logFields("")
	rq.count(http.StatusOK)
	if _, err := brw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n"); err == nil {
		err = brw.Flush()
	}
	if err != nil {
		conn.Close()
		return nil
	}
	tunnel := &bufferedConn{Conn: conn, r: brw.Reader}
	go h.connect.serveTunnel(tunnel, NormalizeHost(host), srv)
	return nil
}

// serveTunnel runs one TLS connection inside a CONNECT tunnel: a handshake
// with the host's certificate, then HTTP/1.1 or HTTP/2 (by ALPN) served by
// the Caddy server, so that routes, logs, metrics and the kustom handler
// treat the requests as addressed to that host.
func (c *connectIntercept) serveTunnel(conn net.Conn, host string, srv http.Handler) {
	tlsConn := tls.Server(conn, c.tlsConfig)
	ctx, cancel := context.WithTimeout(context.Background(), tunnelHandshakeTimeout)
	err := tlsConn.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.logger.Debug("TLS handshake in CONNECT tunnel failed", zap.String("host", host), zap.Error(err))
		tlsConn.Close()
		return
	}
	if sni := tlsConn.ConnectionState().ServerName; sni != "" && NormalizeHost(sni) != host {
		// The certificate chosen by SNI would be for another host than
		// the tunnel's: refuse rather than serve a confused client.
		tlsConn.Close()
		return
	}
	l := newOneConnListener(tlsConn)
	inner := &http.Server{
		Handler: tunnelHandler{host: host, next: srv},
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(context.Background(), tunnelCtxKey{}, host)
		},
		ReadHeaderTimeout: tunnelHeaderTimeout,
		IdleTimeout:       tunnelIdleTimeout,
		ErrorLog:          log.New(zapWriter{c.logger}, "", 0),
		ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
			return context.WithValue(ctx, caddyhttp.ConnCtxKey, nc)
		},
		// Serve returns once the one connection is done.
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				l.done()
			}
		},
	}
	if !c.track(inner) {
		tlsConn.Close() // this config is going away: the app reconnects to the next
		return
	}
	defer c.untrack(inner)
	life := c.maxLifetime
	if life <= 0 {
		life = tunnelMaxLifetime
	}
	lifetime := time.AfterFunc(life, func() { drainTunnel(inner) })
	defer lifetime.Stop()
	// The *tls.Conn itself goes to Serve, so that requests carry r.TLS and
	// ALPN "h2" gets the HTTP/2 server.
	_ = inner.Serve(l)
	if !l.handedOut() {
		// The config closed between track and Serve: Serve returned
		// without taking the connection, which is ours to close. Once
		// taken, the server closes it when its last call is done.
		tlsConn.Close()
	}
}

// track registers a tunnel's server, unless the config is closing.
func (c *connectIntercept) track(s *http.Server) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.tunnels[s] = struct{}{}
	return true
}

func (c *connectIntercept) untrack(s *http.Server) {
	c.mu.Lock()
	delete(c.tunnels, s)
	c.mu.Unlock()
}

// close ends every tunnel this config opened and refuses new ones: the call
// in flight finishes, then the connection closes and the app reconnects
// under the config that replaced this one. It does not wait: a reload must
// not hang on a slow call, which is recorded all the same (the kustom app
// keeps one tracker across reloads).
func (c *connectIntercept) close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.closed = true
	open := make([]*http.Server, 0, len(c.tunnels))
	for s := range c.tunnels {
		open = append(open, s)
	}
	c.mu.Unlock()
	for _, s := range open {
		go drainTunnel(s)
	}
}

// drainTunnel shuts a tunnel's server down gracefully: an idle connection
// closes now, a busy one after its answer (HTTP/1.1 with Connection: close,
// HTTP/2 with GOAWAY), and anything still open after tunnelDrainTimeout is
// cut.
func drainTunnel(s *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), tunnelDrainTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		_ = s.Close()
	}
}

// tunnelHandler passes a tunnel's requests to the Caddy server that opened
// it; the kustom handler refuses those that leave the tunnel's host (see
// tunnelCtxKey).
type tunnelHandler struct {
	host string
	next http.Handler
}

func (t tunnelHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) { t.next.ServeHTTP(w, r) }

// bufferedConn reads what the client sent right after CONNECT (a ClientHello
// may already sit in the server's read buffer) before the raw connection.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// oneConnListener hands one connection to http.Server.Serve, then blocks
// until that connection is done and reports itself closed, so Serve returns.
type oneConnListener struct {
	conn     net.Conn
	accepted sync.Once
	taken    atomic.Bool
	closed   sync.Once
	ch       chan struct{}
}

func newOneConnListener(c net.Conn) *oneConnListener {
	return &oneConnListener{conn: c, ch: make(chan struct{})}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.accepted.Do(func() { c = l.conn; l.taken.Store(true) })
	if c != nil {
		return c, nil
	}
	<-l.ch
	return nil, net.ErrClosed
}

// handedOut tells whether Serve took the connection.
func (l *oneConnListener) handedOut() bool { return l.taken.Load() }

func (l *oneConnListener) done()          { l.closed.Do(func() { close(l.ch) }) }
func (l *oneConnListener) Close() error   { l.done(); return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// zapWriter sends net/http's own error log lines to the module's logger.
type zapWriter struct{ l *zap.Logger }

func (z zapWriter) Write(p []byte) (int, error) {
	z.l.Debug("tunnel server", zap.ByteString("message", p))
	return len(p), nil
}
