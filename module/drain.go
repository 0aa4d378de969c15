package module

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Drain{})
}

// Drain is a listener wrapper (kustom_drain) that lets a reload, such as a
// Kustom key rotation, lose no call on a plain-HTTP listener like a
// sidecar's: it hands the kept-alive connections that are between calls
// over to the new config instead of letting the old one close them.
//
// Without it, a reload makes the old server close every kept-alive
// connection that is between requests at once, and since Go 1.26 also drop
// a request it reads after the reload began. An app may have just written
// its next call on such a connection: the call is lost before the shim
// sees it, and HTTP/1.1 lets a client send it again only if it is
// idempotent, so Go's client, for one, returns an error for an order
// creation. With kustom_drain, a connection the old server would close
// between calls, or on which a new call begins after the reload began, is
// passed to the listener of the new config on the same address, with the
// bytes of the call the old server had begun to read; the new config
// serves it as a fresh connection. The old server never sees that call.
//
// It changes nothing for TLS connections (HTTPS clients mostly speak
// HTTP/2, whose GOAWAY already drains without loss), for HTTP/2 over
// cleartext, with Caddy's protocols limited to h1 (Caddy then wraps
// connections further), or when no new config listens on the address (a
// stop): then connections close as they always did.
type Drain struct{}

// CaddyModule returns the Caddy module information.
func (Drain) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.kustom_drain",
		New: func() caddy.Module { return new(Drain) },
	}
}

// Provision hooks the wrapper into its server's connection states: only the
// server knows which connections are between requests.
func (d *Drain) Provision(ctx caddy.Context) error {
	srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok {
		return fmt.Errorf("kustom_drain: only wraps the listeners of an HTTP server (servers { listener_wrappers { kustom_drain } })")
	}
	if p := srv.Protocols; len(p) > 0 && (!slices.Contains(p, "h1") || !slices.Contains(p, "h2") && !slices.Contains(p, "h2c")) {
		ctx.Logger().Warn("kustom_drain has no effect unless the server speaks h1 and h2 or h2c (Caddy's default)",
			zap.Strings("protocols", p))
	}
	srv.RegisterConnState(drainConnState)
	registerMetrics(ctx.GetMetricsRegistry())
	return nil
}

// WrapListener implements caddy.ListenerWrapper. The newest listener on an
// address is where older ones hand their connections.
func (d *Drain) WrapListener(ln net.Listener) net.Listener {
	l := &drainListener{Listener: ln, key: ln.Addr().Network() + "/" + ln.Addr().String(),
		accepted: make(chan acceptResult), handoff: make(chan *drainConn, 256), done: make(chan struct{})}
	drainListeners.Lock()
	drainListeners.byAddr[l.key] = l
	drainListeners.Unlock()
	go l.acceptLoop()
	return l
}

// UnmarshalCaddyfile reads `kustom_drain` in a server's listener_wrappers.
func (d *Drain) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // the wrapper's name
	if disp.NextArg() {
		return disp.Err("kustom_drain: takes no arguments")
	}
	if disp.NextBlock(0) {
		return disp.Err("kustom_drain: takes no block")
	}
	return nil
}

// drainListeners is the newest kustom_drain listener on each address, in
// this process: a reload starts the new config's listeners before it stops
// the old ones.
var drainListeners = struct {
	sync.Mutex
	byAddr map[string]*drainListener
}{byAddr: map[string]*drainListener{}}

type acceptResult struct {
	c   net.Conn
	err error
}

type drainListener struct {
	net.Listener
	key      string
	closing  atomic.Bool // the server is shutting down
	serving  atomic.Bool // its server has called Accept
	accepted chan acceptResult
	handoff  chan *drainConn // connections from an older config
	done     chan struct{}
	once     sync.Once
}

// acceptLoop feeds Accept from the socket, so that Accept can also take
// connections handed over by an older config.
func (l *drainListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- acceptResult{c, err}:
		case <-l.done:
			if c != nil {
				_ = c.Close()
			}
			return
		}
		if err != nil && (errors.Is(err, net.ErrClosed) || l.closing.Load()) {
			return
		}
	}
}

func (l *drainListener) Accept() (net.Conn, error) {
	l.serving.Store(true)
	select {
	case c := <-l.handoff:
		return c, nil
	case r := <-l.accepted:
		if r.err != nil {
			return nil, r.err
		}
		if _, ok := r.c.(*tls.Conn); ok {
			// Placed after tls: http.Server must see the *tls.Conn itself.
			return r.c, nil
		}
		return &drainConn{Conn: r.c, ln: l, state: stateUnseen}, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close is the first thing http.Server.Shutdown does, before it closes the
// idle connections.
func (l *drainListener) Close() error {
	l.closing.Store(true)
	drainListeners.Lock()
	if drainListeners.byAddr[l.key] == l {
		delete(drainListeners.byAddr, l.key)
	}
	drainListeners.Unlock()
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	// Connections handed over but not yet accepted.
	for {
		select {
		case c := <-l.handoff:
			_ = c.Conn.Close()
		default:
			return err
		}
	}
}

// successor is the listener of a newer config on the same address.
func (l *drainListener) successor() *drainListener {
	drainListeners.Lock()
	defer drainListeners.Unlock()
	if s := drainListeners.byAddr[l.key]; s != l && s != nil && s.serving.Load() && !s.closing.Load() {
		return s
	}
	return nil
}

// drainConnState follows the server's view of each connection: a new or
// idle one is between calls.
func drainConnState(c net.Conn, s http.ConnState) {
	dc, ok := c.(*drainConn)
	if !ok {
		return
	}
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if s == http.StateIdle {
		// Between calls: the error of the aborted background read that
		// ended the last one does not count.
		dc.readFailed = false
	}
	dc.state = s
}

// stateUnseen: the server has not reported this connection, because it
// sees another one wrapping it (TLS, say). Such a connection is never moved.
const stateUnseen http.ConnState = -1

// maxCallBytes bounds what is kept of a call the server has begun to read;
// a connection with more (headers past the shim's 64 KiB limit) is not
// moved.
const maxCallBytes = 64 << 10

// errHandedOver stops the old server's read of a connection now served by
// the new config.
var errHandedOver = errors.New("connection handed over to the new config")

type drainConn struct {
	net.Conn
	ln   *drainListener
	gone atomic.Bool // handed over: the old server's reads, writes and closes no longer touch it

	mu         sync.Mutex
	state      http.ConnState // as the server last reported it
	callBytes  []byte         // read since the last write: between calls, the start of the next one
	pending    []byte         // bytes of a call that an older config began to read
	h2         bool           // HTTP/2 with prior knowledge: not ours to move
	tooLong    bool           // more than maxCallBytes of the call read: not moved
	reading    bool           // a Read is waiting on the socket
	readFailed bool           // the socket read failed: the app closed, or a timeout
	closed     bool
}

// movable: the connection is between calls while its server shuts down.
// Called with mu held.
func (c *drainConn) movable() bool {
	return !c.gone.Load() && !c.closed && !c.h2 && !c.readFailed && !c.tooLong && c.ln.closing.Load() &&
		(c.state == http.StateIdle || c.state == http.StateNew)
}

func (c *drainConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if c.gone.Load() {
		c.mu.Unlock()
		return 0, errHandedOver
	}
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		c.noteCallBytes(b[:n])
		c.mu.Unlock()
		return n, nil
	}
	if c.movable() {
		c.mu.Unlock()
		c.handOver()
		return 0, errHandedOver
	}
	c.reading = true
	c.mu.Unlock()

	n, err := c.Conn.Read(b)

	c.mu.Lock()
	c.reading = false
	if n > 0 {
		c.noteCallBytes(b[:n])
	}
	if c.gone.Load() {
		// Close handed the connection over while this read waited; the
		// bytes are the new config's now.
		c.mu.Unlock()
		c.transfer()
		return 0, errHandedOver
	}
	if err != nil {
		c.readFailed = true
	} else if c.movable() {
		// A call began after the reload did: the old server must not
		// read it (it would drop it unanswered).
		c.mu.Unlock()
		c.handOver()
		return 0, errHandedOver
	}
	c.mu.Unlock()
	return n, err
}

// noteCallBytes keeps what the server read since it last wrote. An app
// sends its next call once it has the whole answer, so between calls these
// are the bytes of the next call the server has begun to read, including
// the byte its background read may have taken while it finished the
// answer. Called with mu held.
func (c *drainConn) noteCallBytes(b []byte) {
	if c.tooLong {
		return
	}
	if len(c.callBytes)+len(b) > maxCallBytes {
		c.tooLong = true
		return
	}
	c.callBytes = append(c.callBytes, b...)
	if c.state == http.StateNew && len(c.callBytes) >= 4 && bytes.HasPrefix(c.callBytes, []byte("PRI ")) {
		c.h2 = true
	}
}

// Close holds back the close of a connection that is between calls while
// the server shuts down, and hands it over instead. Any other close (after
// an answer with Connection: close, after the app closed, after an idle
// timeout) happens at once.
func (c *drainConn) Close() error {
	c.mu.Lock()
	if c.gone.Load() || c.closed {
		c.mu.Unlock()
		return nil
	}
	if c.movable() {
		c.mu.Unlock()
		c.handOver()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	return c.Conn.Close()
}

// handOver marks the connection as the new config's. If the old server is
// reading it, its read is woken and moves it (nothing may read the socket
// in between); otherwise it moves now.
func (c *drainConn) handOver() {
	c.mu.Lock()
	if !c.gone.CompareAndSwap(false, true) {
		c.mu.Unlock()
		return
	}
	reading := c.reading
	c.mu.Unlock()
	if reading {
		_ = c.Conn.SetReadDeadline(time.Now())
		return
	}
	c.transfer()
}

// transfer gives the socket and the call bytes read so far to the newest
// config's listener, or closes it when there is none (a stop).
func (c *drainConn) transfer() {
	c.mu.Lock()
	call := slices.Clone(c.callBytes)
	c.mu.Unlock()
	next := c.ln.successor()
	if next != nil {
		_ = c.Conn.SetDeadline(time.Time{})
		select {
		case next.handoff <- &drainConn{Conn: c.Conn, ln: next, state: stateUnseen, pending: call}:
			shimMetrics.handedOver.Inc()
			return
		default:
		}
	}
	_ = c.Conn.Close()
}

// The old server's deadlines no longer apply once the new config has the
// connection.
func (c *drainConn) SetDeadline(t time.Time) error {
	if c.gone.Load() {
		return nil
	}
	return c.Conn.SetDeadline(t)
}

func (c *drainConn) SetReadDeadline(t time.Time) error {
	if c.gone.Load() {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *drainConn) SetWriteDeadline(t time.Time) error {
	if c.gone.Load() {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *drainConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.gone.Load() {
		c.mu.Unlock()
		return 0, errHandedOver
	}
	if cap(c.callBytes) > maxCallBytes {
		c.callBytes = nil
	}
	c.callBytes, c.tooLong = c.callBytes[:0], false
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Drain)(nil)
	_ caddy.ListenerWrapper = (*Drain)(nil)
	_ caddyfile.Unmarshaler = (*Drain)(nil)
)
