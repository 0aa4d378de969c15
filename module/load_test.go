package module_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// Load tests: many requests through one shim, counted at the
// client, in the shim's metrics and at the upstream, which must all agree.

// loadClient keeps one connection per worker alive, as an app's pool would.
func loadClient(workers int) *http.Client {
	return &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConns:        workers,
			MaxIdleConnsPerHost: workers,
			IdleConnTimeout:     30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// loadRequest is request seq of a mixed workload: one in four creates a
// checkout order (201), the rest read an order (200).
func loadRequest(base string, seq int) *http.Request {
	var req *http.Request
	if seq%4 == 0 {
		req, _ = http.NewRequest("POST", base+"/checkout/v3/orders", strings.NewReader(fmt.Sprintf(`{"order_amount":%d}`, seq)))
		req.Header.Set("Content-Type", "application/json")
	} else {
		req, _ = http.NewRequest("GET", fmt.Sprintf("%s/ordermanagement/v1/orders/o-%d", base, seq), nil)
	}
	req.SetBasicAuth(klarnaUser, klarnaPassword)
	req.Header.Set("X-Load-Seq", strconv.Itoa(seq))
	return req
}

// echoSeq answers as Kustom would, with the request's sequence number in the
// body so that the client can tell its answer from another request's.
func echoSeq(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Klarna-Correlation-Id", "corr-"+r.Header.Get("X-Load-Seq"))
	if r.Method == "POST" {
		w.WriteHeader(http.StatusCreated)
	}
	_, _ = io.WriteString(w, `{"seq":`+r.Header.Get("X-Load-Seq")+`}`)
}

// errorLog keeps the first few failures and counts them all.
type errorLog struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (l *errorLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	if len(l.first) < 10 {
		l.first = append(l.first, fmt.Sprintf(format, args...))
	}
}

func (l *errorLog) report(t *testing.T, what string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n > 0 {
		t.Errorf("%s: %d failed requests, the first:\n  %s", what, l.n, strings.Join(l.first, "\n  "))
	}
}

// sendOne sends request seq and checks that the answer is the upstream's
// own. A wrong answer goes to errs; a request that got no answer at all
// returns its transport error, for the caller to judge.
func sendOne(c *http.Client, base string, seq int, errs *errorLog) error {
	req := loadRequest(base, seq)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := http.StatusOK
	if req.Method == "POST" {
		want = http.StatusCreated
	}
	switch {
	case err != nil:
		errs.add("#%d %s %s: reading the body: %v", seq, req.Method, req.URL.Path, err)
	case resp.StatusCode != want || resp.Header.Get("Kustom-Shim-Error") != "":
		errs.add("#%d %s %s: status %d (%s): %s", seq, req.Method, req.URL.Path, resp.StatusCode, resp.Header.Get("Kustom-Shim-Error"), body)
	case string(body) != `{"seq":`+strconv.Itoa(seq)+`}` || resp.Header.Get("Klarna-Correlation-Id") != "corr-"+strconv.Itoa(seq):
		errs.add("#%d: another request's answer: %s", seq, body)
	}
	return nil
}

// TestLoadSidecar20k: 20 000 requests from 64 concurrent clients through a
// sidecar shim with its access log and metrics on. Every one gets its own
// upstream answer, reaches the upstream exactly once with the Kustom key, and
// is counted once in the metrics.
func TestLoadSidecar20k(t *testing.T) {
	if testing.Short() {
		t.Skip("20 000 requests: not under -short")
	}
	const total, workers = 20000, 64
	up := testupstream.New(t)
	f := startFaultShim(t, shimOpts{up: up})

	// The upstream counts what it gets; its recorder is emptied as the test
	// goes, so that 20 000 recorded requests never sit in memory at once.
	var arrived [total]atomic.Int32
	var swapped, other atomic.Int64
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		seq, err := strconv.Atoi(r.Header.Get("X-Load-Seq"))
		if err == nil && seq >= 0 && seq < total && r.Header.Get("Authorization") == "Basic "+kustomKey && r.Host == "api.kustom.co" {
			arrived[seq].Add(1)
			swapped.Add(1)
		} else {
			other.Add(1)
		}
		echoSeq(w, r)
	})

	c := loadClient(workers)
	before := shimtest.ScrapeURL(t, f.base+"/metrics")
	var next atomic.Int64
	var errs errorLog
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(90 * time.Second) // a hard stop, far above the expected few seconds
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				seq := int(next.Add(1) - 1)
				if seq >= total || time.Now().After(deadline) {
					return
				}
				if seq%2000 == 1999 {
					up.Reset()
				}
				if err := sendOne(c, f.base, seq, &errs); err != nil {
					errs.add("#%d: %v", seq, err)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	c.CloseIdleConnections()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("%d requests, %d workers: %v, %.0f requests/s; heap in use %d MiB",
		total, workers, elapsed.Round(time.Millisecond), total/elapsed.Seconds(), ms.HeapInuse>>20)
	if time.Now().After(deadline) {
		t.Fatalf("not done in %v", deadline.Sub(start))
	}
	errs.report(t, "load")

	after := shimtest.ScrapeURL(t, f.base+"/metrics")
	for _, m := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kustom_shim_requests_total", nil, total},
		{"kustom_shim_requests_total", map[string]string{"service": "checkout", "from_host": "local", "to_host": "api.kustom.co", "code": "201"}, total / 4},
		{"kustom_shim_requests_total", map[string]string{"service": "order_management", "from_host": "local", "to_host": "api.kustom.co", "code": "200"}, total * 3 / 4},
		{"kustom_shim_credentials_total", map[string]string{"result": "swapped"}, total},
		{"kustom_shim_credentials_total", map[string]string{"credential": "shop1", "result": "swapped"}, total},
		{"kustom_shim_refused_total", nil, 0},
		{"kustom_shim_request_duration_seconds", nil, total},
	} {
		if d := counterDelta(before, after, m.name, m.labels); d != m.want {
			t.Errorf("%s%v went up by %v, want %v", m.name, m.labels, d, m.want)
		}
	}
	if n := swapped.Load(); n != total || other.Load() != 0 {
		t.Errorf("the upstream got %d requests with the Kustom key and %d others, want %d and 0", n, other.Load(), total)
	}
	var missing, twice []int
	for i := range arrived {
		switch arrived[i].Load() {
		case 1:
		case 0:
			missing = append(missing, i)
		default:
			twice = append(twice, i)
		}
	}
	if len(missing)+len(twice) > 0 {
		t.Errorf("%d requests never reached the upstream (e.g. %v), %d more than once (e.g. %v)",
			len(missing), missing[:min(5, len(missing))], len(twice), twice[:min(5, len(twice))])
	}
	if elapsed > 30*time.Second {
		t.Logf("slow: %v for %d requests (the goal is under 30 s on 2 cores)", elapsed, total)
	}
	assertNoSecrets(t, f, nil)
}

// --- secrets, after everything -------------------------------------------

// TestSecretsAfterLoadFaultsAndReload puts one shim through a compact
// version of every test above — load with both credential forms, refusals,
// each upstream and client fault, a reload with a new key through the admin
// API — and then looks for every secret everywhere a person or a program can
// see: both access logs, Caddy's log, /metrics, the status page (JSON and
// HTML), every body received, and the admin API's config.
func TestSecretsAfterLoadFaultsAndReload(t *testing.T) {
	const newKey = "kco_test_api_after-reload-key-0008"
	t.Setenv("KS_KUSTOM_KEY_NEW", newKey)
	up := testupstream.New(t)
	f := startFaultShim(t, shimOpts{up: up, admin: true, transport: []string{"response_header_timeout 500ms"}})
	var bodies [][]byte
	keep := func(b []byte) { bodies = append(bodies, b) }
	c := faultClient(10 * time.Second)
	auth1, auth2 := basicAuth(klarnaUser, klarnaPassword), basicAuth("K222_second", klarnaPassword)

	reached := make(chan struct{})
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("X-Fault") {
		case "slow":
			select {
			case <-time.After(3 * time.Second):
			case <-r.Context().Done():
			}
			return
		case "reset":
			resetMidBody("text/csv", true, reached)(w, r)
			return
		case "big":
			w.Header().Set("Content-Type", "text/csv")
			for i := 0; i < 4096; i++ {
				if _, err := w.Write(bytes.Repeat([]byte("x"), 32<<10)); err != nil {
					return
				}
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})

	// Load with both credential forms.
	var wg sync.WaitGroup
	var errs errorLog
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			auth := auth1
			if w%2 == 1 {
				auth = auth2
			}
			for i := 0; i < 25; i++ {
				resp, raw, err := call(c, "GET", fmt.Sprintf("%s/ordermanagement/v1/orders/o-%d-%d", f.base, w, i), auth, "", nil)
				if err != nil || resp.StatusCode != 200 {
					errs.add("%v %v %s", err, resp, raw)
				}
			}
		}(w)
	}
	wg.Wait()
	errs.report(t, "load")
	reqs := up.Requests()
	var sawKey, sawUserPass bool
	for _, r := range reqs {
		sawKey = sawKey || r.Header.Get("Authorization") == "Basic "+kustomKey
		sawUserPass = sawUserPass || r.Header.Get("Authorization") == basicAuth(kustomUser, kustomPassword)
	}
	if len(reqs) != 400 || !sawKey || !sawUserPass {
		t.Errorf("upstream: %d requests, API key seen %v, username and password seen %v", len(reqs), sawKey, sawUserPass)
	}

	// Refusals, whose bodies are the shim's own.
	for _, a := range []string{basicAuth(klarnaUser, "wrong"), basicAuth("K999_nobody", klarnaPassword), "Basic bad!", ""} {
		resp, raw, err := call(c, "POST", f.base+"/checkout/v3/orders", a, `{"order_amount":1}`, nil)
		if err != nil || resp.StatusCode != 401 {
			t.Errorf("refusal: %v %v %s", err, resp, raw)
		}
		keep(raw)
	}
	// The upstream too slow: 504.
	resp, raw, err := call(c, "POST", f.base+"/checkout/v3/orders", auth1, `{"order_amount":1}`, map[string]string{"X-Fault": "slow"})
	if err != nil || resp.StatusCode != 504 {
		t.Errorf("slow upstream: %v %v %s", err, resp, raw)
	}
	keep(raw)
	// The upstream dying mid-body.
	resp, raw, _ = callReset(c, f.base+"/settlements/v1/reports/payout?payment_reference=p1", auth2, reached)
	if resp == nil || resp.StatusCode != 200 {
		t.Errorf("reset mid-body: %v", resp)
	}
	keep(raw)
	// A client giving up mid-upload and mid-download.
	addr := f.addr()
	if err := abortUpload(addr, "/hpp/v1/sessions?abort=secrets", false); err != nil {
		t.Fatal(err)
	}
	if conn, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET /settlements/v1/reports/payout?payment_reference=big HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nX-Fault: big\r\n\r\n", addr, auth1)
		_, _ = io.CopyN(io.Discard, conn, 256<<10)
		conn.Close()
	}
	waitLogLines(t, f.shim.AccessLog, "abort=secrets", 1, 10*time.Second)

	// A reload with a new key through the admin API; then the new key is used.
	adminLoad(t, f.admin, f.config("KS_KUSTOM_KEY_NEW"))
	up.Reset()
	resp, raw, err = callSettled(c, "GET", f.base+"/checkout/v3/orders/o1", auth1, "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after reload: %v %v %s", err, resp, raw)
	}
	keep(raw)
	if r := up.Requests(); len(r) != 1 || r[0].Header.Get("Authorization") != "Basic "+newKey {
		t.Errorf("after the reload the upstream did not get the new key")
	}
	// The upstream unreachable: the same config, dialling a dead port.
	down := f.opts
	down.up, down.bareUpstream, down.keyVar = testupstream.Down(t), true, "KS_KUSTOM_KEY_NEW"
	adminLoad(t, f.admin, f.caddyfile(down))
	resp, raw, err = callSettled(c, "GET", f.base+"/checkout/v3/orders/o1", auth1, "", nil)
	if err != nil || resp.StatusCode != 502 {
		t.Errorf("upstream down: %v %v %s", err, resp, raw)
	}
	keep(raw)
	c.CloseIdleConnections()

	// Everything that was logged was about those requests.
	logs := shimtest.Logs(f.shim.AccessLog)
	for _, want := range []string{`"status":401`, `"status":504`, `"status":502`, `"kustom_credential":"shop2"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("access log has no %s: the checks below see less than they should", want)
		}
	}
	assertNoSecrets(t, f, []string{newKey}, bodies...)
	// Also the admin API's other read-only endpoints.
	for _, path := range []string{"/config/apps/http", "/reverse_proxy/upstreams"} {
		resp, raw, err := callSettled(c, "GET", f.admin+path, "", "", nil)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("admin GET %s: %v %v %s", path, err, resp, raw)
			continue
		}
		if s, leaked := shimtest.Contains(string(raw), append(secrets(), newKey)...); leaked {
			t.Errorf("admin GET %s shows a secret (%.6s…)", path, s)
		}
	}
}
