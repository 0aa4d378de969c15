package module_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kustomshim/kustomshim/internal/shimtest"
)

func TestHPPRequestURLGoesToKustom(t *testing.T) {
	e := startSidecar(t, "")
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(201) })
	cases := []struct{ name, sent, want string }{
		{"hard-coded Klarna URL", "https://api.klarna.com/checkout/v3/orders/o1", "https://api.kustom.co/checkout/v3/orders/o1"},
		{"URL on the shim's own origin", e.base + "/checkout/v3/orders/o2", "https://api.kustom.co/checkout/v3/orders/o2"},
		{"playground Klarna URL", "https://api.playground.klarna.com/checkout/v3/orders/o3", "https://api.playground.kustom.co/checkout/v3/orders/o3"},
		{"other URL left alone", "https://example.com/orders/o4", "https://example.com/orders/o4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.up.Reset()
			body := fmt.Sprintf(`{"payment_session_url":%q,"merchant_urls":{"success":"https://shop.example/ok?sid={{session_id}}&x=1","back":"https://api.klarna.com/not-an-api-field"},"options":{"page_title":"Köp <här>","purchase_amount":1234567890123456789}}`, c.sent)
			resp, raw := do(t, shimtest.Client(), "POST", e.base+"/hpp/v1/sessions", klarnaUser, klarnaPassword, body,
				map[string]string{"Content-Type": "application/json"})
			if resp.StatusCode != 201 {
				t.Fatalf("status %d: %s", resp.StatusCode, raw)
			}
			r := e.up.Requests()
			if len(r) != 1 {
				t.Fatalf("upstream got %d requests", len(r))
			}
			want := strings.Replace(body, fmt.Sprintf("%q", c.sent), fmt.Sprintf("%q", c.want), 1)
			if string(r[0].Body) != want {
				t.Errorf("upstream body\n%s\nwant\n%s", r[0].Body, want)
			}
			if cl := r[0].Header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(r[0].Body)) {
				t.Errorf("Content-Length %s for %d bytes", cl, len(r[0].Body))
			}
		})
	}
}

const hppResponse = `{"session_id":"s1","session_url":"https://api.kustom.co/hpp/v1/sessions/s1",` +
	`"distribution_url":"https://api.kustom.co/hpp/v1/sessions/s1/distribution",` +
	`"manual_identification_check_url":"https://api.kustom.co/hpp/v1/sessions/s1/manual-id-check",` +
	`"redirect_url":"https://pay.kustom.co/hpp/s1","qr_code_url":"https://pay.kustom.co/qr/s1","expires_at":"2038-01-19T03:14:07Z"}`

func TestHPPAndSettlementResponseURLsStayOnTheShim(t *testing.T) {
	e := startSidecar(t, "")
	settlement := `{"payouts":[{"payment_reference":"p1","totals":{"sale_amount":12345678901234567890}}],` +
		`"pagination":{"count":1,"total":41,"next":"https://api.kustom.co/settlements/v1/payouts?offset=20&size=20","prev":"https://api.kustom.co/settlements/v1/payouts?offset=0&size=20"}}`
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		body := hppResponse
		if strings.HasPrefix(r.URL.Path, "/settlements/") {
			body = settlement
		}
		if r.Method == "POST" {
			w.WriteHeader(201)
		}
		_, _ = io.WriteString(w, body)
	})
	for _, c := range []struct{ method, path, host, origin string }{
		{"POST", "/hpp/v1/sessions", "", e.base},
		{"GET", "/hpp/v1/sessions/s1", "api.klarna.com", "http://api.klarna.com"},
	} {
		resp, raw := do(t, shimtest.Client(), c.method, e.base+c.path, klarnaUser, klarnaPassword, `{"payment_session_url":"https://api.klarna.com/checkout/v3/orders/o1"}`,
			map[string]string{"Host": c.host})
		var got map[string]string
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("%s %s: %v: %s", c.method, c.path, err, raw)
		}
		for field, want := range map[string]string{
			"session_url":                     c.origin + "/hpp/v1/sessions/s1",
			"distribution_url":                c.origin + "/hpp/v1/sessions/s1/distribution",
			"manual_identification_check_url": c.origin + "/hpp/v1/sessions/s1/manual-id-check",
			"redirect_url":                    "https://pay.kustom.co/hpp/s1", // a browser URL: untouched
			"qr_code_url":                     "https://pay.kustom.co/qr/s1",
			"expires_at":                      "2038-01-19T03:14:07Z",
		} {
			if got[field] != want {
				t.Errorf("%s %s: %s = %q, want %q", c.method, c.path, field, got[field], want)
			}
		}
		if resp.Header.Get("Content-Length") != strconv.Itoa(len(raw)) {
			t.Errorf("Content-Length %q for %d bytes", resp.Header.Get("Content-Length"), len(raw))
		}
	}

	resp, raw := do(t, shimtest.Client(), "GET", e.base+"/settlements/v1/payouts?size=20", klarnaUser, klarnaPassword, "", nil)
	want := strings.ReplaceAll(settlement, "https://api.kustom.co", e.base)
	if resp.StatusCode != 200 || string(raw) != want {
		t.Errorf("settlement page\n%s\nwant\n%s", raw, want)
	}
}

func TestGzipResponseIsRewritten(t *testing.T) {
	e := startSidecar(t, "")
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") != "gzip" {
			t.Errorf("upstream Accept-Encoding %q, want only gzip on a rewritten endpoint", r.Header.Get("Accept-Encoding"))
		}
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = io.WriteString(zw, hppResponse)
		_ = zw.Close()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
		_, _ = w.Write(b.Bytes())
	})
	// Ask the way a client library does; disable Go's transparent decoding
	// so that the test sees exactly what the shim sent.
	req, _ := http.NewRequest("GET", e.base+"/hpp/v1/sessions/s1", nil)
	req.SetBasicAuth(klarnaUser, klarnaPassword)
	req.Header.Set("Accept-Encoding", "gzip, deflate, br")
	resp, err := shimtest.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ce := resp.Header.Get("Content-Encoding"); ce != "" {
		t.Errorf("Content-Encoding %q; the rewritten body is sent as is", ce)
	}
	if resp.Header.Get("Content-Length") != strconv.Itoa(len(raw)) {
		t.Errorf("Content-Length %q for %d bytes", resp.Header.Get("Content-Length"), len(raw))
	}
	if want := strings.ReplaceAll(hppResponse, `"https://api.kustom.co/`, `"`+e.base+`/`); string(raw) != want {
		t.Errorf("body\n%s\nwant\n%s", raw, want)
	}
}

func TestResponseOverRewriteLimitIsRefused(t *testing.T) {
	e := startSidecar(t, "")
	big := `{"payouts":["` + strings.Repeat("x", 9<<20) + `"],"pagination":{"next":"https://api.kustom.co/settlements/v1/payouts?offset=20"}}`
	for _, declared := range []bool{true, false} {
		t.Run(fmt.Sprintf("content-length declared %v", declared), func(t *testing.T) {
			e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if declared {
					w.Header().Set("Content-Length", strconv.Itoa(len(big)))
				}
				for i := 0; i < len(big); i += 64 << 10 {
					_, _ = io.WriteString(w, big[i:min(i+64<<10, len(big))])
				}
			})
			resp, raw := do(t, shimtest.Client(), "GET", e.base+"/settlements/v1/payouts", klarnaUser, klarnaPassword, "", nil)
			if resp.StatusCode != 502 || resp.Header.Get("Kustom-Shim-Error") != "response_too_large" {
				t.Fatalf("status %d reason %q (%d bytes)", resp.StatusCode, resp.Header.Get("Kustom-Shim-Error"), len(raw))
			}
			if bytes.Contains(raw, []byte("api.kustom.co")) {
				t.Error("the refusal leaks the upstream body")
			}
		})
	}
}

func TestUnexpectedBodiesPassUnchangedAndAreLoggedOnce(t *testing.T) {
	e := startSidecar(t, "")
	const page = `<html><body>maintenance: see https://api.kustom.co/status</body></html>`
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json") // but it is not
		_, _ = io.WriteString(w, page)
	})
	for i := 0; i < 3; i++ {
		resp, raw := do(t, shimtest.Client(), "GET", e.base+"/hpp/v1/sessions/s1", klarnaUser, klarnaPassword, "", nil)
		if resp.StatusCode != 200 || string(raw) != page {
			t.Fatalf("status %d body %q, want the upstream's own", resp.StatusCode, raw)
		}
	}
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/csv")
		_, _ = io.WriteString(w, "not,json\n")
	})
	if _, raw := do(t, shimtest.Client(), "GET", e.base+"/settlements/v1/payouts", klarnaUser, klarnaPassword, "", nil); string(raw) != "not,json\n" {
		t.Errorf("CSV on a JSON endpoint changed: %q", raw)
	}
	shimtest.WaitFor(t, "the notice in the log", 5*time.Second, func() bool {
		return strings.Contains(shimtest.Logs(e.shim.ErrorLog), "GET /hpp/v1/sessions/{id} response")
	})
	if n := strings.Count(shimtest.Logs(e.shim.ErrorLog), "GET /hpp/v1/sessions/{id} response"); n != 1 {
		t.Errorf("the notice was logged %d times, want once", n)
	}
}

func TestDeprecatedEndpointIsProxiedAndWarned(t *testing.T) {
	e := startSidecar(t, "")
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	resp, _ := do(t, shimtest.Client(), "POST", e.base+"/ordermanagement/v1/orders/o1/captures/c1/trigger-send-out", klarnaUser, klarnaPassword, "", nil)
	if resp.StatusCode != 204 || len(e.up.Requests()) != 1 {
		t.Fatalf("status %d, upstream got %d", resp.StatusCode, len(e.up.Requests()))
	}
	var warned bool
	shimtest.WaitFor(t, "the deprecation warning", 5*time.Second, func() bool {
		for _, line := range strings.Split(shimtest.Logs(e.shim.ErrorLog), "\n") {
			var entry map[string]any
			if json.Unmarshal([]byte(line), &entry) == nil && entry["level"] == "warn" &&
				entry["endpoint"] == "trigger-send-out" && entry["credential"] == "shop1" {
				warned = true
			}
		}
		return warned
	})
}

// TestLargeReportStreamsInFlatMemory sends a 256 MiB settlement report
// through the shim and watches the heap: it must stay flat, because the
// report is never held in memory.
func TestLargeReportStreamsInFlatMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB transfer skipped in -short mode")
	}
	e := startSidecar(t, "")
	const size = 256 << 20
	line := []byte(strings.Repeat("p1,2026-01-01,100.00,SEK,", 40) + "\n")
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/csv")
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for sent := 0; sent < size; {
			n := min(len(line), size-sent)
			if _, err := w.Write(line[:n]); err != nil {
				return
			}
			sent += n
		}
	})
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	peak := base
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak {
					peak = m.HeapInuse
				}
			}
		}
	}()
	req, _ := http.NewRequest("GET", e.base+"/settlements/v1/reports/payout-with-transactions?payment_reference=p1", nil)
	req.SetBasicAuth(klarnaUser, klarnaPassword)
	resp, err := shimtest.Client().Do(req)
	if err != nil {
		close(done)
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	close(done)
	if err != nil || n != size {
		t.Fatalf("read %d bytes (%v), want %d", n, err, size)
	}
	growth := int64(peak) - int64(base)
	t.Logf("heap in use grew by %.1f MiB while %d MiB streamed", float64(growth)/(1<<20), size>>20)
	if growth > 32<<20 {
		t.Errorf("heap grew by %d MiB for a %d MiB report: the body is being held in memory", growth>>20, size>>20)
	}
}
