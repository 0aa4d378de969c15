package module_test

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kustomshim/kustomshim/internal/shimtest"
)

// TestRetriesOnlyWhatIsSafe: the first attempt of every request dies after
// the upstream has read it. GET/HEAD and requests with a
// Klarna-Idempotency-Key are tried again (Kustom executes a repeated key
// once); any other POST is not, because it may have taken effect.
func TestRetriesOnlyWhatIsSafe(t *testing.T) {
	e := startSidecar(t, "")
	cases := []struct {
		name, method, path, idem, body string
		wantStatus, wantAttempts       int
	}{
		{"GET is retried", "GET", "/checkout/v3/orders/o1", "", "", 200, 2},
		{"POST with idempotency key is retried with its body", "POST", "/ordermanagement/v1/orders/o1/captures", "cap-1", `{"captured_amount":100}`, 200, 2},
		{"POST without idempotency key is not retried", "POST", "/checkout/v3/orders", "", `{"order_amount":1}`, 502, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.up.Reset()
			var n atomic.Int32
			e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) == 1 {
					panic(http.ErrAbortHandler) // the connection dies mid-exchange
				}
				w.WriteHeader(200)
			})
			hdr := map[string]string{}
			if c.idem != "" {
				hdr["Klarna-Idempotency-Key"] = c.idem
			}
			resp, raw := do(t, shimtest.Client(), c.method, e.base+c.path, klarnaUser, klarnaPassword, c.body, hdr)
			if resp.StatusCode != c.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.wantStatus, raw)
			}
			reqs := e.up.Requests()
			if len(reqs) != c.wantAttempts {
				t.Fatalf("upstream got %d attempts, want %d", len(reqs), c.wantAttempts)
			}
			for i, r := range reqs {
				if string(r.Body) != c.body || r.Header.Get("Klarna-Idempotency-Key") != c.idem {
					t.Errorf("attempt %d: body %q key %q, want %q %q", i+1, r.Body, r.Header.Get("Klarna-Idempotency-Key"), c.body, c.idem)
				}
			}
		})
	}
}

// TestRequestBodyLimit: bodies over Klarna's 1 MB limit are refused before
// anything is sent, whether their length is declared or chunked; a body of
// exactly the limit goes through whole.
func TestRequestBodyLimit(t *testing.T) {
	e := startSidecar(t, "")
	const limit = 1 << 20
	cases := []struct {
		name       string
		size       int
		chunked    bool
		wantStatus int
	}{
		{"declared length over the limit", limit + 1, false, 413},
		{"chunked over the limit", limit + 1, true, 413},
		{"chunked at the limit", limit, true, 200},
		{"declared length at the limit", limit, false, 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.up.Reset()
			body := strings.Repeat("a", c.size)
			var rd io.Reader = strings.NewReader(body)
			if c.chunked {
				rd = io.MultiReader(rd) // hides the length: sent chunked
			}
			req, _ := http.NewRequest("POST", e.base+"/checkout/v3/orders", rd)
			req.SetBasicAuth(klarnaUser, klarnaPassword)
			resp, err := shimtest.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.wantStatus)
			}
			reqs := e.up.Requests()
			if c.wantStatus == 413 {
				if resp.Header.Get("Kustom-Shim-Error") != "request_too_large" || len(reqs) != 0 {
					t.Fatalf("reason %q, upstream got %d requests", resp.Header.Get("Kustom-Shim-Error"), len(reqs))
				}
				return
			}
			if len(reqs) != 1 || len(reqs[0].Body) != c.size {
				t.Fatalf("upstream got %d requests, body %d bytes", len(reqs), len(reqs[0].Body))
			}
		})
	}
}

// TestRequestHeaderLimit: oversized headers are refused before anything is
// sent; ordinary ones pass.
func TestRequestHeaderLimit(t *testing.T) {
	e := startSidecar(t, "max_request_headers 8KiB")
	for _, c := range []struct {
		size   int
		status int
	}{{6 << 10, 200}, {10 << 10, 431}} {
		e.up.Reset()
		resp, raw := do(t, shimtest.Client(), "GET", e.base+"/checkout/v3/orders/o1", klarnaUser, klarnaPassword, "",
			map[string]string{"X-Trace": strings.Repeat("t", c.size)})
		if resp.StatusCode != c.status {
			t.Fatalf("%d-byte header: status %d, want %d: %s", c.size, resp.StatusCode, c.status, raw)
		}
		if c.status == 431 && (resp.Header.Get("Kustom-Shim-Error") != "headers_too_large" || len(e.up.Requests()) != 0) {
			t.Fatalf("reason %q, upstream got %d", resp.Header.Get("Kustom-Shim-Error"), len(e.up.Requests()))
		}
	}
}
