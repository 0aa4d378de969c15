package module

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
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

// Drain is a listener wrapper (kustom_drain) that keeps a reload, such as a
// Kustom key rotation, from losing the calls apps write on kept-alive
// connections of a plain-HTTP listener like a sidecar's: it hands the
// connections that are between calls over to the new config instead of
// letting the old one close them. Two losses remain beyond its reach: a
// call whose head the old server finishes reading just as the reload
// begins (Go's server drops it unanswered), and connections still queued
// on the old listening socket, which Linux resets unless
// net.ipv4.tcp_migrate_req=1.
//
// Without it, a reload makes the old server close every kept-alive
// connection that is between requests at once, and (Go 1.26) drop a request
// it reads after the reload began. An app may have just written its next
// call on such a connection: the call is lost before the shim sees it, and
// HTTP/1.1 lets a client send it again only if it is idempotent, so Go's
// client, for one, returns an error for an order creation. With
// kustom_drain, such a connection is passed to the listener of the new
// config on the same address, with the bytes of the next call that the old
// server had already read; the new config serves it as a fresh connection
// and the old server never answers that call.
//
// To know those bytes, it follows the framing of each request on the
// connection (requestFraming), and it makes the start of the next call
// read on the new config as on the old (settleStart). It leaves alone what
// it cannot follow: servers with TLS, HTTP/2 over cleartext, hijacked
// connections, chunked request bodies, a next call that begins the HTTP/2
// preface, a stop (no new config on the address), and servers whose
// protocols are limited to h1 (Caddy then wraps connections further). Those
// close as Caddy closes them.
type Drain struct {
	srv *caddyhttp.Server
}

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
	d.srv = srv
	srv.RegisterConnState(drainConnState)
	registerMetrics(ctx.GetMetricsRegistry())
	return nil
}

// WrapListener implements caddy.ListenerWrapper. The newest listener on an
// address is where older ones hand their connections. A server with TLS
// keeps its listeners as they are: a connection is only ever passed between
// plain-HTTP listeners, so that no change of config can let a plain
// connection into an HTTPS server.
func (d *Drain) WrapListener(ln net.Listener) net.Listener {
	if d.srv != nil && len(d.srv.TLSConnPolicies) > 0 {
		return ln
	}
	l := &drainListener{Listener: ln, key: ln.Addr().Network() + "/" + ln.Addr().String(),
		accepted: make(chan acceptResult), signal: make(chan struct{}, 1), done: make(chan struct{})}
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
// the old ones. Its lock also orders hand-overs against a listener's Close,
// so that no connection is left in a queue nobody serves.
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
	key          string
	closing      atomic.Bool // its server is shutting down
	serving      atomic.Bool // its server has called Accept
	acceptFailed atomic.Bool // Accept returned an error: a Close now is Serve giving up, not a shutdown
	accepted     chan acceptResult
	done         chan struct{}
	once         sync.Once

	qmu     sync.Mutex
	queue   []*drainConn // connections handed over by an older config
	qclosed bool
	signal  chan struct{}
}

// acceptLoop feeds Accept from the socket, so that Accept can also take
// connections handed over by an older config. A connection it accepted
// as the listener closed goes to the new config too.
func (l *drainListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- acceptResult{c, err}:
		case <-l.done:
			if c != nil {
				(&drainConn{Conn: c, ln: l, state: stateUnseen}).transfer()
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
	for {
		l.qmu.Lock()
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			l.qmu.Unlock()
			return c, nil
		}
		l.qmu.Unlock()
		select {
		case <-l.signal:
			continue
		case r := <-l.accepted:
			if r.err != nil {
				l.acceptFailed.Store(true)
				return nil, r.err
			}
			if _, ok := r.c.(interface{ ConnectionState() tls.ConnectionState }); ok {
				// TLS below this wrapper: http.Server must see the
				// connection as it is.
				return r.c, nil
			}
			return &drainConn{Conn: r.c, ln: l, state: stateUnseen}, nil
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
}

// push queues a handed-over connection for Accept; false if the listener is
// closed. Called with drainListeners locked.
func (l *drainListener) push(c *drainConn) bool {
	l.qmu.Lock()
	if l.qclosed {
		l.qmu.Unlock()
		return false
	}
	l.queue = append(l.queue, c)
	l.qmu.Unlock()
	select {
	case l.signal <- struct{}{}:
	default:
	}
	return true
}

// Close is the first thing http.Server.Shutdown does, before it closes the
// idle connections.
func (l *drainListener) Close() error {
	drainListeners.Lock()
	if !l.acceptFailed.Load() {
		l.closing.Store(true)
	}
	if drainListeners.byAddr[l.key] == l {
		delete(drainListeners.byAddr, l.key)
	}
	drainListeners.Unlock()
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	l.qmu.Lock()
	l.qclosed = true
	queued := l.queue
	l.queue = nil
	l.qmu.Unlock()
	// Handed over to this config but not yet accepted by its server: when
	// a reload follows closely on another, the newest config serves them.
	// Closing them would lose a call an app had already written.
	for _, c := range queued {
		c.transfer()
	}
	return err
}

// drainConnState follows the server's view of each connection and, when a
// request's head has been read, where that request ends.
func drainConnState(c net.Conn, s http.ConnState) {
	dc, ok := c.(*drainConn)
	if !ok {
		return
	}
	dc.mu.Lock()
	defer dc.mu.Unlock()
	switch s {
	case http.StateActive:
		if dc.state == http.StateNew || dc.state == http.StateIdle {
			dc.requestRead()
		}
	case http.StateIdle:
		// Between calls: the error of the aborted background read that
		// ended the last one does not count; a body the server did not
		// read to its end leaves the framing unknown.
		dc.readFailed = false
		if dc.bodyLeft > 0 {
			dc.unsure = true
		}
	}
	dc.state = s
}

// stateUnseen: the server has not reported this connection (it sees another
// one wrapping it). Such a connection is never moved.
const stateUnseen http.ConnState = -1

// maxCallBytes bounds what is kept of a call the server has begun to read;
// a longer head (past the shim's 64 KiB limit) leaves the connection where
// it is.
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
	next       []byte         // read, and past the end of the last request: the start of the next one
	bodyLeft   int64          // body bytes of the current request still to come
	pending    []byte         // bytes of a call an older config had begun to read, served first
	h2         bool           // HTTP/2 with prior knowledge: not ours to move
	unsure     bool           // the framing is lost: never moved
	reading    bool           // a Read is waiting on the socket
	readFailed bool           // the socket read failed: the app closed, or a timeout
	closed     bool

	// served: an HTTP/1 request has been read on the connection, here or
	// under an older config; its next bytes are HTTP/1 too.
	served bool
	// afterPOST: the last request was a POST, and the CR/LF net/http drops
	// before the next one (crlfAfterPOST) are still at the start of
	// next, then pending, then the socket.
	afterPOST bool
	// startOpen: handed over before the next call's first bytes were
	// known. They are held back in pending, unserved, until settleStart
	// can tell how the call begins.
	startOpen bool
	// preface: handed over mid-HTTP/1, and the next bytes begin the
	// HTTP/2 preface. Read ends the connection instead of serving them.
	preface bool
}

// movable: the connection is between calls while its server shuts down.
// Called with mu held.
func (c *drainConn) movable() bool {
	return !c.gone.Load() && !c.closed && !c.h2 && !c.unsure && !c.readFailed && !c.preface && c.bodyLeft == 0 &&
		c.ln.closing.Load() && (c.state == http.StateIdle || c.state == http.StateNew)
}

// Read serves the server the bytes of a call an older config handed over
// (pending), then the socket's. While its server shuts down, a connection
// between calls is handed over instead of read, pending bytes included: a
// new config that is itself shutting down would read a whole call from
// them and drop it unanswered, as it drops any request it reads once its
// shutdown began.
func (c *drainConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		if n, done, err := c.readWithoutSocket(b); done {
			return n, err
		}
		n, err := c.Conn.Read(b)
		if n, again, err := c.afterSocketRead(b, n, err); !again {
			return n, err
		}
	}
}

// readWithoutSocket is the part of Read that needs no socket read: it
// answers (done) for a connection that is gone or ends at the HTTP/2
// preface, hands over a movable one, and serves pending bytes. Otherwise
// it marks the connection as reading, for handOver to wake, and the caller
// reads the socket.
func (c *drainConn) readWithoutSocket(b []byte) (n int, done bool, err error) {
	c.mu.Lock()
	switch {
	case c.gone.Load():
		c.mu.Unlock()
		return 0, true, errHandedOver
	case c.preface:
		// As if the app had closed: the server ends the connection
		// without an answer, and does not switch it to HTTP/2.
		c.mu.Unlock()
		return 0, true, io.EOF
	case c.movable():
		c.mu.Unlock()
		c.handOver()
		return 0, true, errHandedOver
	case len(c.pending) > 0 && !c.startOpen:
		n = copy(b, c.pending)
		c.pending = c.pending[n:]
		c.noteRead(b[:n])
		c.mu.Unlock()
		return n, true, nil
	}
	c.reading = true
	c.mu.Unlock()
	return 0, false, nil
}

// afterSocketRead takes the result of Read's socket read (n bytes of b, or
// err): it follows the bytes, or holds them back while the start of a
// handed-over call is open, and hands the connection over if that is due
// now. again: nothing to return yet, Read goes round once more.
func (c *drainConn) afterSocketRead(b []byte, n int, err error) (int, bool, error) {
	c.mu.Lock()
	c.reading = false
	if c.startOpen && n > 0 {
		// The call's first bytes: held back until they are known.
		c.pending = append(c.pending, b[:n]...)
		n = 0
		c.settleStart()
	} else if n > 0 {
		c.noteRead(b[:n])
	}
	if c.gone.Load() {
		// Close handed the connection over while this read waited; the
		// bytes are the new config's now.
		c.mu.Unlock()
		c.transfer()
		return 0, false, errHandedOver
	}
	if err != nil {
		c.readFailed = true
		c.mu.Unlock()
		return n, false, err
	}
	if n == 0 {
		// Held back: serve them, or read on, as they tell.
		c.mu.Unlock()
		return 0, true, nil
	}
	if c.movable() {
		// A call began after the reload did: the old server must not
		// read it (it would drop it unanswered).
		c.mu.Unlock()
		c.handOver()
		return 0, false, errHandedOver
	}
	c.mu.Unlock()
	return n, false, nil
}

// settleStart looks at the first bytes of the next call on a connection
// handed over by an older config, once enough of them are there (pending
// holds them), and ends startOpen. Called with mu held, or before the
// connection is shared.
//
// The new server sees the connection as fresh, so two things the old
// server does with the start of the next call it would do otherwise:
//   - after a POST, the old server drops up to four CR/LF (the extra CRLF
//     some clients send after a body); the new one would read them as a
//     malformed request and answer 400, a final answer where a close lets
//     a client retry. They are dropped here.
//   - a connection that began with the HTTP/2 preface is served as HTTP/2
//     by a server with h2c; mid-HTTP/1, the old server reads the preface
//     as an HTTP/1 request and closes after its answer. Such a connection
//     is closed (preface) rather than switched to HTTP/2.
func (c *drainConn) settleStart() {
	rest := c.pending
	if c.afterPOST {
		n, known := crlfAfterPOST(rest)
		if !known {
			return
		}
		rest = rest[n:]
	}
	if c.served && len(rest) < len(h2PrefaceStart) && bytes.HasPrefix(h2PrefaceStart, rest) {
		return // may yet be the preface
	}
	c.pending, c.afterPOST, c.startOpen = rest, false, false
	c.preface = c.served && bytes.HasPrefix(rest, h2PrefaceStart)
}

// noteRead follows what the server reads: body bytes of the current
// request pass, and the rest is the start of the next request, which the
// server may hold in its buffers (read ahead, or the one byte its
// background read takes while it finishes an answer). Called with mu held.
func (c *drainConn) noteRead(b []byte) {
	if c.unsure || c.h2 || c.state == stateUnseen || c.state == http.StateHijacked {
		return
	}
	if c.bodyLeft > 0 {
		k := min(int64(len(b)), c.bodyLeft)
		c.bodyLeft -= k
		b = b[k:]
	}
	if len(b) == 0 {
		return
	}
	if len(c.next)+len(b) > maxCallBytes {
		c.unsure, c.next = true, nil
		return
	}
	c.next = append(c.next, b...)
	if c.state == http.StateNew && len(c.next) >= len(h2PrefaceStart) && bytes.HasPrefix(c.next, h2PrefaceStart) {
		c.h2 = true
	}
}

// requestRead: the server has read a request's head (it is now active);
// whatever follows the request's end is the next one's. Called with mu held.
func (c *drainConn) requestRead() {
	if c.unsure || c.h2 {
		return
	}
	r, f := requestFraming(c.next, c.afterPOST)
	if f != framed {
		c.unsure, c.next = true, nil
		return
	}
	c.served, c.afterPOST = true, r.post
	rest := c.next[r.headLen:]
	if int64(len(rest)) >= r.bodyLen {
		c.next = append(c.next[:0], rest[r.bodyLen:]...)
		c.bodyLeft = 0
		return
	}
	c.bodyLeft = r.bodyLen - int64(len(rest))
	c.next = c.next[:0]
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
	if c.reading {
		// Under mu: the woken read clears this deadline (in transfer) only
		// after it is set.
		_ = c.Conn.SetReadDeadline(time.Now())
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.transfer()
}

// transfer gives the socket, with the bytes of the next call read so far,
// to the newest config's listener on the address, or closes it when there
// is none (a stop), or when the next call begins the HTTP/2 preface
// (settleStart).
func (c *drainConn) transfer() {
	c.mu.Lock()
	moved := &drainConn{Conn: c.Conn, state: stateUnseen, pending: append(slices.Clone(c.next), c.pending...),
		served: c.served, afterPOST: c.afterPOST, startOpen: true}
	c.mu.Unlock()
	moved.settleStart()
	if moved.preface {
		_ = c.Conn.Close()
		return
	}
	_ = c.Conn.SetDeadline(time.Time{})
	drainListeners.Lock()
	next := drainListeners.byAddr[c.ln.key]
	ok := next != nil && next != c.ln && next.serving.Load() && !next.closing.Load()
	if ok {
		moved.ln = next
		ok = next.push(moved)
	}
	drainListeners.Unlock()
	if ok {
		shimMetrics.handedOver.Inc()
		return
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
	if c.gone.Load() {
		return 0, errHandedOver
	}
	return c.Conn.Write(b)
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Drain)(nil)
	_ caddy.ListenerWrapper = (*Drain)(nil)
	_ caddyfile.Unmarshaler = (*Drain)(nil)
)
