package module_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// Fault tests: what the shim does when the upstream or the client misbehaves.
// Each one is bounded in time (client timeouts, deadlines on raw
// connections, upstream handlers that give up on their own), and each checks
// that the shim leaks no goroutine: the fault is repeated many times, so that
// a leak of even one goroutine per request stands out from the noise of
// connection pools.

// faultClient is a client of its own, so that its idle connections can be
// closed before goroutines are counted.
func faultClient(timeout time.Duration) *http.Client {
	c := shimtest.Client()
	c.Timeout = timeout
	return c
}

// call sends one request and reads the whole answer; a transport error or an
// error reading the body is returned, not fatal.
func call(c *http.Client, method, url, auth, body string, hdr map[string]string) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return nil, nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp, raw, err
}

// callSettled is call, tried again while the request gets no answer at all
// (for at most 5 s): for a request right after a reload, whose connection
// the reload may drop, or which may meet the admin endpoint being replaced
// (TestReloadUnderLoad is about that; the callers are not). It polls: no
// event tells the test that the new server is the one answering.
func callSettled(c *http.Client, method, url, auth, body string, hdr map[string]string) (resp *http.Response, raw []byte, err error) {
	shimtest.Poll(5*time.Second, func() bool {
		resp, raw, err = call(c, method, url, auth, body, hdr)
		return resp != nil
	})
	return resp, raw, err
}

// goroutines counts goroutines once the count has stopped falling (for at
// most 1 s), so that the tail of an earlier test (a Caddy config stopping,
// connections closing) is not counted. It polls: goroutines of Caddy's and
// net/http's ending signal nothing a test could wait on.
func goroutines() int {
	n := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		time.Sleep(50 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m >= n {
			return n
		}
		n = m
	}
	return n
}

// leakSlack is how far above its count before a fault the goroutine count
// may stay: connection pools come and go, but every fault is repeated more
// often than this, so a goroutine left behind per request shows.
const leakSlack = 4

// checkNoLeak waits up to 10 s for the goroutine count to come back to within
// slack of base, and on failure shows every goroutine, grouped by stack.
func checkNoLeak(t *testing.T, what string, base, slack int, clients ...*http.Client) {
	t.Helper()
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	n := 0
	if shimtest.Poll(10*time.Second, func() bool { n = runtime.NumGoroutine(); return n <= base+slack }) {
		t.Logf("%s: %d goroutines before, %d after", what, base, n)
		return
	}
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	t.Errorf("%s: %d goroutines before, still %d after 10 s (slack %d): a leak\n%s", what, base, n, slack, b.String())
}

// waitLogLines waits until the access log holds n entries whose line
// contains marker: the shim has finished with those requests.
func waitLogLines(t *testing.T, path, marker string, n int, d time.Duration) {
	t.Helper()
	shimtest.WaitFor(t, fmt.Sprintf("%d access log entries for %s (the shim is stuck on a request)", n, marker), d, func() bool {
		return strings.Count(shimtest.Logs(path), marker) >= n
	})
}

// counterDelta is how much a metric went up between two scrapes.
func counterDelta(before, after shimtest.Scrape, name string, labels map[string]string) float64 {
	return after.Value(name, labels) - before.Value(name, labels)
}

// --- upstream down ---------------------------------------------------------

func TestFaultUpstreamDown(t *testing.T) {
	f := startFaultShim(t, shimOpts{up: testupstream.Down(t), bareUpstream: true})
	c := faultClient(10 * time.Second)
	auth := basicAuth(klarnaUser, klarnaPassword)
	cases := []struct {
		name, method, path, body string
		hdr                      map[string]string
	}{
		{"GET, retried", "GET", "/ordermanagement/v1/orders/o1", "", nil},
		{"POST with an idempotency key, retried", "POST", "/ordermanagement/v1/orders/o1/captures", `{"captured_amount":1}`,
			map[string]string{"Klarna-Idempotency-Key": "cap-1", "Content-Type": "application/json"}},
		{"POST without a key", "POST", "/checkout/v3/orders", `{"order_amount":1}`, map[string]string{"Content-Type": "application/json"}},
	}
	// Warm up the pools before counting goroutines.
	if _, _, err := call(c, "GET", f.base+cases[0].path, auth, "", nil); err != nil {
		t.Fatal(err)
	}
	before := shimtest.ScrapeURL(t, f.base+"/metrics")
	base := goroutines()
	const rounds = 8
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i := 0; i < rounds; i++ {
				start := time.Now()
				resp, raw, err := call(c, tc.method, f.base+tc.path, auth, tc.body, tc.hdr)
				if err != nil {
					t.Fatal(err)
				}
				checkRefusal(t, nil, resp, raw, http.StatusBadGateway, "upstream_unreachable")
				if d := time.Since(start); d > 3*time.Second {
					t.Errorf("502 took %v", d)
				}
			}
		})
	}
	checkNoLeak(t, "upstream down", base, leakSlack, c)
	after := shimtest.ScrapeURL(t, f.base+"/metrics")
	want := float64(rounds * len(cases))
	if d := counterDelta(before, after, "kustom_shim_refused_total", map[string]string{"reason": "upstream_unreachable"}); d != want {
		t.Errorf("refused_total{upstream_unreachable} went up by %v, want %v", d, want)
	}
	if d := counterDelta(before, after, "kustom_shim_requests_total", map[string]string{"code": "502"}); d != want {
		t.Errorf("requests_total{code=502} went up by %v, want %v", d, want)
	}
	assertNoSecrets(t, f, nil)
}

// --- upstream resetting mid-body -----------------------------------------

// resetMidBody answers with headers and part of a body, flushes, then kills
// the stream: a RST_STREAM on HTTP/2, a closed connection on HTTP/1.1. Given
// reached, it kills it only once the client says the part reached it (or
// after 10 s); without, at once, for a body the shim holds back, which no
// client sees before the end.
func resetMidBody(contentType string, declareLength bool, reached <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Fault") != "reset" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"ok":true}`)
			return
		}
		w.Header().Set("Content-Type", contentType)
		if declareLength {
			w.Header().Set("Content-Length", strconv.Itoa(1<<20))
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(bytes.Repeat([]byte("x"), 64<<10))
		_ = http.NewResponseController(w).Flush()
		if reached != nil {
			select {
			case <-reached:
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}
		panic(http.ErrAbortHandler)
	}
}

// callReset sends a request that resetMidBody answers, reads the head and
// the first byte of the body, tells the upstream (on reached) that the part
// reached the client, and reads on to the end or the error.
func callReset(c *http.Client, url, auth string, reached chan<- struct{}) (*http.Response, []byte, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Authorization", auth)
	req.Header.Set("X-Fault", "reset")
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	first := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		return resp, nil, fmt.Errorf("the first byte of the body: %w", err)
	}
	select {
	case reached <- struct{}{}:
	case <-time.After(10 * time.Second):
		return resp, first, errors.New("the upstream never waited for the part to reach the client")
	}
	rest, err := io.ReadAll(resp.Body)
	return resp, append(first, rest...), err
}

func TestFaultUpstreamResetMidBody(t *testing.T) {
	for _, proto := range []struct {
		name      string
		transport []string
		want      string // the protocol the upstream must see
	}{
		{"HTTP/2 upstream", nil, "HTTP/2.0"},
		{"HTTP/1.1 upstream", []string{"versions 1.1"}, "HTTP/1.1"},
	} {
		t.Run(proto.name, func(t *testing.T) {
			up := testupstream.New(t)
			f := startFaultShim(t, shimOpts{up: up, transport: proto.transport})
			c := faultClient(10 * time.Second)
			auth := basicAuth(klarnaUser, klarnaPassword)
			streamed := f.base + "/settlements/v1/reports/payout?payment_reference=p1"
			for _, tc := range []struct {
				name    string
				declare bool
			}{{"with Content-Length", true}, {"chunked", false}} {
				t.Run(tc.name, func(t *testing.T) {
					reached := make(chan struct{})
					up.Handle(resetMidBody("text/csv", tc.declare, reached))
					if _, _, err := call(c, "GET", streamed, auth, "", nil); err != nil {
						t.Fatal(err)
					}
					before := shimtest.ScrapeURL(t, f.base+"/metrics")
					base := goroutines()
					const rounds = 20
					for i := 0; i < rounds; i++ {
						up.Reset()
						resp, raw, err := callReset(c, streamed, auth, reached)
						if resp == nil {
							t.Fatalf("no status line at all: %v", err)
						}
						if resp.StatusCode != http.StatusOK {
							t.Fatalf("status %d, want the upstream's 200", resp.StatusCode)
						}
						if err == nil {
							t.Fatalf("a clean end of body after %d of %d bytes: the client cannot tell the response is incomplete", len(raw), 1<<20)
						}
						if len(raw) == 0 || len(raw) >= 1<<20 {
							t.Errorf("read %d bytes before the error", len(raw))
						}
						if n := len(up.Requests()); n != 1 {
							t.Errorf("upstream got %d attempts, want 1 (a response under way is never retried)", n)
						}
						// The shim is fine for the next request.
						resp, raw, err = call(c, "GET", streamed, auth, "", nil)
						if err != nil || resp.StatusCode != 200 || string(raw) != `{"ok":true}` {
							t.Fatalf("next request: %v %v %s", err, resp, raw)
						}
						if r := up.Requests(); len(r) != 2 || r[1].Proto != proto.want {
							t.Fatalf("upstream requests %d, protocol %q, want %q", len(r), r[len(r)-1].Proto, proto.want)
						}
					}
					checkNoLeak(t, "upstream reset mid-body", base, leakSlack, c)
					after := shimtest.ScrapeURL(t, f.base+"/metrics")
					// Every request counts, the aborted ones too.
					if d := counterDelta(before, after, "kustom_shim_requests_total", map[string]string{"service": "settlement"}); d != 2*rounds {
						t.Errorf("requests_total{service=settlement} went up by %v for %d requests, of which %d were aborted mid-body", d, 2*rounds, rounds)
					}
				})
			}
			// A JSON answer the shim holds back to rewrite (settlement
			// pagination): nothing has reached the client when the upstream
			// dies, so the shim can still answer in the Klarna shape.
			t.Run("held back for rewriting", func(t *testing.T) {
				up.Handle(resetMidBody("application/json", true, nil))
				payouts := f.base + "/settlements/v1/payouts?size=10"
				base := goroutines()
				const rounds = 10
				var dropped error
				for i := 0; i < rounds; i++ {
					resp, raw, err := call(c, "GET", payouts, auth, "", map[string]string{"X-Fault": "reset"})
					if err != nil {
						if dropped == nil {
							dropped = err
						}
					} else {
						checkRefusal(t, nil, resp, raw, http.StatusBadGateway, "upstream_unreachable")
					}
					resp, raw, err = call(c, "GET", payouts, auth, "", nil)
					if err != nil || resp.StatusCode != 200 {
						t.Fatalf("next request: %v %v %s", err, resp, raw)
					}
				}
				checkNoLeak(t, "upstream reset while held back", base, leakSlack, c)
				if dropped != nil {
					t.Errorf("an upstream reset while the shim holds back a JSON body dropped the connection (%v) instead of answering 502 upstream_unreachable", dropped)
				}
			})
		})
	}
}

// --- upstream slower than response_header_timeout -------------------------

func TestFaultUpstreamSlowTimesOut(t *testing.T) {
	up := testupstream.New(t)
	f := startFaultShim(t, shimOpts{up: up, transport: []string{"response_header_timeout 500ms"}})
	var gaveUp, finished atomic.Int32
	var attempts sync.Map // path → *atomic.Int32
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Fault") != "slow" {
			w.WriteHeader(http.StatusOK)
			return
		}
		n, _ := attempts.LoadOrStore(r.URL.Path, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		select {
		case <-time.After(3 * time.Second):
			finished.Add(1)
			w.WriteHeader(http.StatusOK)
		case <-r.Context().Done():
			gaveUp.Add(1) // the shim cancelled the upstream request
		}
	})
	c := faultClient(10 * time.Second)
	auth := basicAuth(klarnaUser, klarnaPassword)
	slow := map[string]string{"X-Fault": "slow"}

	if _, _, err := call(c, "GET", f.base+"/checkout/v3/orders/o1", auth, "", nil); err != nil {
		t.Fatal(err)
	}
	base := goroutines()

	// A POST without an idempotency key is tried once: 504 after the 500 ms.
	const concurrent = 16
	var wg sync.WaitGroup
	errs := make(chan string, concurrent)
	var firstResp *http.Response // the first request's 504, to check its shape once all are in
	var firstRaw []byte
	for i := 0; i < concurrent; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			resp, raw, err := call(c, "POST", fmt.Sprintf("%s/checkout/v3/orders?n=%d", f.base, i), auth, `{"order_amount":1}`, slow)
			d := time.Since(start)
			switch {
			case err != nil:
				errs <- err.Error()
			case resp.StatusCode != 504 || resp.Header.Get("Kustom-Shim-Error") != "upstream_timeout":
				errs <- fmt.Sprintf("status %d reason %q: %s", resp.StatusCode, resp.Header.Get("Kustom-Shim-Error"), raw)
			case d < 450*time.Millisecond || d > 1500*time.Millisecond:
				errs <- fmt.Sprintf("504 after %v, want about 500ms", d)
			case i == 0:
				firstResp, firstRaw = resp, raw
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error("POST:", e)
	}
	if firstResp != nil {
		checkRefusal(t, nil, firstResp, firstRaw, 504, "upstream_timeout")
	}

	// A GET is retried (proxyRetries): each try waits 500 ms.
	start := time.Now()
	resp, raw, err := call(c, "GET", f.base+"/checkout/v3/orders/slow-get", auth, "", slow)
	d := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	checkRefusal(t, nil, resp, raw, 504, "upstream_timeout")
	n, _ := attempts.Load("/checkout/v3/orders/slow-get")
	tries := n.(*atomic.Int32).Load()
	t.Logf("GET: 504 after %v, %d upstream attempts", d.Round(time.Millisecond), tries)
	if d > time.Duration(tries)*600*time.Millisecond+500*time.Millisecond {
		t.Errorf("GET: 504 after %v for %d tries of 500ms", d, tries)
	}

	// The upstream was told to stop each time, not left to run to the end.
	shimtest.WaitFor(t, "the upstream handlers to see the cancellation", 3*time.Second, func() bool {
		return int(gaveUp.Load()) == concurrent+int(tries)
	})
	if finished.Load() != 0 {
		t.Errorf("%d slow upstream handlers ran to the end: the shim did not cancel them", finished.Load())
	}
	// And the shim is fine afterwards.
	if resp, raw, err := call(c, "GET", f.base+"/checkout/v3/orders/o1", auth, "", nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("next request: %v %v %s", err, resp, raw)
	}
	checkNoLeak(t, "upstream slow", base, leakSlack, c)
	assertNoSecrets(t, f, nil, raw)
}

// --- client aborting mid-upload -------------------------------------------

// abortUpload sends the request head for a body of declared (or, chunked,
// undeclared) length, waits until the shim starts reading the body (the "100
// Continue" its server sends on the first read; PHP's curl asks for one),
// sends part of the body, and goes away with the rest never sent: the shim
// is mid-body when the client leaves.
func abortUpload(addr, path string, chunked bool) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	head := "POST " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: " + basicAuth(klarnaUser, klarnaPassword) +
		"\r\nContent-Type: application/json\r\nKlarna-Idempotency-Key: idem-abort\r\nExpect: 100-continue\r\n"
	part := `{"payment_session_url":"https://api.klarna.com/payments/v1/sessions/s1","order_amount":`
	if chunked {
		head += "Transfer-Encoding: chunked\r\n\r\n"
		part = fmt.Sprintf("%x\r\n%s\r\n", len(part), part)
	} else {
		head += "Content-Length: 10000\r\n\r\n"
	}
	if _, err := io.WriteString(conn, head); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("waiting for the shim to read the body: %w", err)
	}
	if resp.StatusCode != http.StatusContinue {
		return fmt.Errorf("the shim answered %d before reading the body", resp.StatusCode)
	}
	_, err = io.WriteString(conn, part)
	return err // the body stalls, and the client goes away
}

func TestFaultClientAbortsUpload(t *testing.T) {
	up := testupstream.New(t)
	f := startFaultShim(t, shimOpts{up: up})
	// What the upstream saw of each aborted request: a request whose body
	// it read to its declared end is one it would act on.
	type seen struct {
		path     string
		declared int64
		got      int
	}
	var mu sync.Mutex
	var complete []seen
	var aborted int
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.RawQuery, "abort=") {
			w.WriteHeader(http.StatusOK)
			return
		}
		body, _ := io.ReadAll(r.Body) // the bytes the upstream read before the stream ended
		mu.Lock()
		if r.ContentLength >= 0 && int64(len(body)) == r.ContentLength {
			complete = append(complete, seen{r.URL.Path, r.ContentLength, len(body)})
		} else {
			aborted++
		}
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	c := faultClient(10 * time.Second)
	auth := basicAuth(klarnaUser, klarnaPassword)
	addr := f.addr()
	if _, _, err := call(c, "GET", f.base+"/checkout/v3/orders/o1", auth, "", nil); err != nil {
		t.Fatal(err)
	}
	base := goroutines()
	for _, tc := range []struct {
		name, path string
		chunked    bool
	}{
		{"declared length, streamed body", "/checkout/v3/orders", false},
		{"chunked, read by the shim", "/checkout/v3/orders", true},
		// rewriteRequestBody reads the whole body; a read error (the
		// client went away mid-body) is refused, never sent truncated.
		{"declared length, body rewritten by the shim", "/hpp/v1/sessions", false},
		{"chunked, body rewritten by the shim", "/hpp/v1/sessions", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			complete = nil
			mu.Unlock()
			marker := "abort=" + strings.NewReplacer(" ", "-", ",", "").Replace(tc.name)
			const n = 10
			var wg sync.WaitGroup
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					if err := abortUpload(addr, fmt.Sprintf("%s?%s&i=%d", tc.path, marker, i), tc.chunked); err != nil {
						t.Error(err)
					}
				}(i)
			}
			wg.Wait()
			// The shim finishes with every aborted request: no hang.
			waitLogLines(t, f.shim.AccessLog, marker, n, 10*time.Second)
			// And the next request works.
			if resp, raw, err := call(c, "POST", f.base+tc.path, auth, `{"order_amount":1}`, nil); err != nil || resp.StatusCode != 200 {
				t.Fatalf("next request: %v %v %s", err, resp, raw)
			}
			mu.Lock()
			got := append([]seen(nil), complete...)
			mu.Unlock()
			if len(got) > 0 {
				t.Errorf("the upstream received %d aborted uploads as complete requests, e.g. %s with %d of the client's 10000 bytes",
					len(got), got[0].path, got[0].got)
			}
		})
	}
	mu.Lock()
	t.Logf("the upstream saw %d aborted requests (the rest never reached it)", aborted)
	mu.Unlock()
	checkNoLeak(t, "client aborting uploads", base, leakSlack, c)
}

// --- client aborting mid-download -----------------------------------------

func TestFaultClientAbortsDownload(t *testing.T) {
	up := testupstream.New(t)
	f := startFaultShim(t, shimOpts{up: up})
	type result struct {
		written  int64
		err      error
		failedAt time.Time
	}
	results := make(chan result, 1)
	const chunk, limit = 32 << 10, 1 << 30
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Fault") != "big" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Type", "text/csv")
		rc := http.NewResponseController(w)
		buf := bytes.Repeat([]byte("p1,100,SEK,2026-01-01\n"), chunk/22)
		var res result
		stop := time.Now().Add(15 * time.Second) // bounded even if the abort is never seen
		for res.written < limit && time.Now().Before(stop) {
			n, err := w.Write(buf)
			if err == nil {
				err = rc.Flush()
			}
			res.written += int64(n)
			if err != nil {
				res.err, res.failedAt = err, time.Now()
				break
			}
		}
		results <- res
	})
	c := faultClient(10 * time.Second)
	auth := basicAuth(klarnaUser, klarnaPassword)
	addr := f.addr()
	if _, _, err := call(c, "GET", f.base+"/settlements/v1/reports/payout?payment_reference=warm", auth, "", nil); err != nil {
		t.Fatal(err)
	}
	base := goroutines()
	const rounds, readFirst = 10, 1 << 20
	for i := 0; i < rounds; i++ {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET /settlements/v1/reports/payout?payment_reference=big-%d HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nX-Fault: big\r\n\r\n",
			i, addr, auth)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if n, err := io.CopyN(io.Discard, resp.Body, readFirst); err != nil {
			t.Fatalf("read %d bytes: %v", n, err)
		}
		closed := time.Now()
		conn.Close()
		select {
		case res := <-results:
			if res.err == nil {
				t.Fatalf("the upstream wrote all %d bytes: the shim kept reading after the client left", res.written)
			}
			if d := res.failedAt.Sub(closed); d > 2*time.Second {
				t.Errorf("the upstream's write failed %v after the client left", d)
			}
			// What sits in socket buffers and the HTTP/2 stream window.
			if extra := res.written - readFirst; extra > 64<<20 {
				t.Errorf("the upstream wrote %d MiB more than the client read", extra>>20)
			}
			if i == 0 {
				t.Logf("upstream wrote %d KiB (client read %d KiB), then: %v, %v after the client left",
					res.written>>10, readFirst>>10, res.err, res.failedAt.Sub(closed).Round(time.Millisecond))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream kept writing 10 s after the client left")
		}
	}
	if resp, raw, err := call(c, "GET", f.base+"/settlements/v1/reports/payout?payment_reference=after", auth, "", nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("next request: %v %v %s", err, resp, raw)
	}
	checkNoLeak(t, "client aborting downloads", base, leakSlack, c)
}

// --- secrets ---------------------------------------------------------------

// assertNoSecrets looks for every secret (secrets() and extra) in everything
// an operator or a client gets to see: the access log, Caddy's log, a
// /metrics scrape, the status page as JSON and as HTML, the admin API's
// config when the admin API is on, and the bodies given.
func assertNoSecrets(t *testing.T, f *env, extra []string, bodies ...[]byte) {
	t.Helper()
	needles := append(secrets(), extra...)
	c := faultClient(10 * time.Second)
	defer c.CloseIdleConnections()
	get := func(url string, hdr map[string]string) string {
		resp, raw, err := callSettled(c, "GET", url, "", "", hdr)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v %s", url, err, resp, raw)
		}
		return string(raw)
	}
	places := map[string]string{
		"access log":     shimtest.Logs(f.shim.AccessLog),
		"Caddy's log":    shimtest.Logs(f.shim.ErrorLog),
		"/metrics":       get(f.base+"/metrics", nil),
		"status (JSON)":  get(f.base+"/kustom/status?format=json", nil),
		"status (HTML)":  get(f.base+"/kustom/status", map[string]string{"Accept": "text/html"}),
		"a body we read": string(bytes.Join(bodies, []byte("\n"))),
	}
	if !strings.Contains(places["status (HTML)"], "<html") || !strings.HasPrefix(places["status (JSON)"], "{") {
		t.Errorf("status page: not the HTML and JSON expected")
	}
	if f.admin != "" {
		places["admin GET /config/"] = get(f.admin+"/config/", nil)
		if !strings.Contains(places["admin GET /config/"], `"kustom"`) {
			t.Errorf("admin GET /config/: not the config: %.200s", places["admin GET /config/"])
		}
	}
	if places["access log"] == "" || places["Caddy's log"] == "" {
		t.Errorf("empty logs: nothing to check")
	}
	for where, text := range places {
		if s, leaked := shimtest.Contains(text, needles...); leaked {
			i := strings.Index(text, s)
			t.Errorf("a secret (%.6s…) is in the %s: …%s…", s, where, text[max(0, i-200):i])
		}
	}
}
