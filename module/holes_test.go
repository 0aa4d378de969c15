package module_test

// End-to-end tests for holes an adversarial review found: each goes through a
// real Caddy in front of the recording TLS upstream.

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// TestGzipBombOverRewriteLimitIsRefused: a gzip body that is small on the
// wire but decodes past MaxResponseRewrite cannot be rewritten, so it must
// be refused like a plain body over the limit, not passed on still
// carrying Kustom's URLs.
func TestGzipBombOverRewriteLimitIsRefused(t *testing.T) {
	e := startSidecar(t, "")
	var bomb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&bomb, gzip.BestCompression)
	_, _ = io.WriteString(zw, `{"pagination":{"next":"https://api.kustom.co/settlements/v1/payouts?offset=20"},"payouts":["`)
	zeros := make([]byte, 64<<10)
	for i := range zeros {
		zeros[i] = '0'
	}
	for n := 0; n < 9<<20; n += len(zeros) {
		_, _ = zw.Write(zeros)
	}
	_, _ = io.WriteString(zw, `"]}`)
	_ = zw.Close()
	if bomb.Len() > 64<<10 {
		t.Fatalf("the bomb is %d bytes on the wire; it should be small", bomb.Len())
	}
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(bomb.Len()))
		_, _ = w.Write(bomb.Bytes())
	})
	for _, path := range []string{"/settlements/v1/payouts", "/hpp/v1/sessions/s1"} {
		t.Run(path, func(t *testing.T) {
			resp, raw := do(t, shimtest.Client(), "GET", e.base+path, klarnaUser, klarnaPassword, "",
				map[string]string{"Accept-Encoding": "gzip"})
			if resp.StatusCode != 502 || resp.Header.Get("Kustom-Shim-Error") != "response_too_large" {
				t.Fatalf("status %d reason %q Content-Encoding %q (%d bytes), want 502 response_too_large",
					resp.StatusCode, resp.Header.Get("Kustom-Shim-Error"), resp.Header.Get("Content-Encoding"), len(raw))
			}
			if ce := resp.Header.Get("Content-Encoding"); ce != "" {
				t.Errorf("the refusal carries the upstream's Content-Encoding %q", ce)
			}
			if bytes.Contains(raw, []byte("api.kustom.co")) || bytes.HasPrefix(raw, []byte{0x1f, 0x8b}) {
				t.Error("the refusal leaks the upstream body")
			}
		})
	}
}

// TestUpstreamShimErrorHeaderIsStripped: Kustom-Shim-Error means "the shim
// refused"; an upstream (or anything posing as one) must not be able to
// send it, as a header or a trailer, on a streamed or a rewritten response.
func TestUpstreamShimErrorHeaderIsStripped(t *testing.T) {
	e := startSidecar(t, "")
	e.up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Kustom-Shim-Error", "wrong_password")
		w.Header().Set("Trailer", "Kustom-Shim-Error, X-Other")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, hppResponse)
		http.NewResponseController(w).Flush() // no Content-Length: room for trailers
		w.Header().Set("Kustom-Shim-Error", "wrong_password")
		w.Header().Set("X-Other", "kept")
		w.Header().Set(http.TrailerPrefix+"Kustom-Shim-Error", "unknown_username")
	})
	for _, path := range []string{"/checkout/v3/orders/o1", "/hpp/v1/sessions/s1"} {
		t.Run(path, func(t *testing.T) {
			resp, raw := do(t, shimtest.Client(), "GET", e.base+path, klarnaUser, klarnaPassword, "", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, raw)
			}
			if v, ok := resp.Header["Kustom-Shim-Error"]; ok {
				t.Errorf("the client saw the upstream's Kustom-Shim-Error header %q", v)
			}
			if v, ok := resp.Trailer["Kustom-Shim-Error"]; ok {
				t.Errorf("the client saw the upstream's Kustom-Shim-Error trailer %q", v)
			}
			if resp.Header.Get("X-Other") != "kept" && resp.Trailer.Get("X-Other") != "kept" {
				t.Errorf("the upstream's other trailer was lost: header %v trailer %v", resp.Header, resp.Trailer)
			}
			if len(e.up.Requests()) == 0 {
				t.Error("the request did not reach the upstream")
			}
		})
	}
	// The shim's own refusals still carry it.
	resp, _ := do(t, shimtest.Client(), "GET", e.base+"/checkout/v3/orders/o1", klarnaUser, "nope", "", nil)
	if resp.Header.Get("Kustom-Shim-Error") != "wrong_password" {
		t.Errorf("the shim's own refusal carries Kustom-Shim-Error %q", resp.Header.Get("Kustom-Shim-Error"))
	}
}

// TestInsecureSkipVerifyIsRefused: the shim sends Kustom credentials, so
// the connection that carries them must check the server's certificate,
// just as an http:// upstream is refused.
func TestInsecureSkipVerifyIsRefused(t *testing.T) {
	t.Setenv("KS_KLARNA_PW", klarnaPassword)
	t.Setenv("KS_KUSTOM_KEY", kustomKey)
	shim := shimtest.New(t)
	up := testupstream.New(t)
	for name, transport := range map[string]string{
		"alone":               "tls_insecure_skip_verify",
		"with a trust pool":   "tls_trust_pool file " + up.CAFile + "\n\t\t\ttls_insecure_skip_verify",
		"with other settings": "dial_timeout 5s\n\t\t\ttls_insecure_skip_verify",
	} {
		t.Run(name, func(t *testing.T) {
			err := shimtest.LoadError(t, shim.Globals("")+fmt.Sprintf(`
:%d {
	kustom {
		upstream https://%s
		transport http {
			%s
		}
		credential shop1 {
			klarna_username %s
			klarna_password {env.KS_KLARNA_PW}
			kustom_api_key {env.KS_KUSTOM_KEY}
		}
	}
}
`, shimtest.Port(t), up.Addr, transport, klarnaUser))
			if err == nil || !strings.Contains(err.Error(), "tls_insecure_skip_verify") {
				t.Fatalf("load error %v, want one naming tls_insecure_skip_verify", err)
			}
			if s, leaked := shimtest.Contains(err.Error(), secrets()...); leaked {
				t.Errorf("the error shows %.6s…", s)
			}
		})
	}
}

// TestAmbiguousPathsNeverReachUpstream: paths that another server could
// read as a way out of a Kustom prefix are refused before anything is sent.
// They go out on a raw connection so that no client library normalises them.
func TestAmbiguousPathsNeverReachUpstream(t *testing.T) {
	e := startSidecar(t, "")
	for _, c := range []struct{ name, path string }{
		{"Tomcat path parameter on ..", "/checkout/v3/..;/..;/payments/v1/sessions"},
		{"Tomcat path parameter on .", "/checkout/v3/.;x/orders"},
		{"Tomcat path parameter on an empty segment", "/checkout/v3/;x/orders"},
		{"double-encoded dots", "/checkout/v3/%252e%252e/%252e%252e/payments/v1/sessions"},
		{"double-encoded slash", "/checkout/v3/..%252f..%252fpayments/v1/sessions"},
		{"encoded dots", "/checkout/v3/%2e%2e/%2e%2e/payments/v1/sessions"},
		{"encoded dots, upper case", "/checkout/v3/%2E%2E/%2E%2E/payments/v1/sessions"},
		{"half-encoded dots", "/checkout/v3/.%2e/.%2E/payments/v1/sessions"},
		{"encoded dot segment", "/checkout/v3/%2e/orders"},
		{"encoded slash", "/checkout/v3/..%2f..%2fpayments/v1/sessions"},
		{"escape decoding to non-UTF-8", "/checkout/v3/orders/%ff%fe"},
		{"overlong UTF-8 dots", "/checkout/v3/%c0%ae%c0%ae/%c0%ae%c0%ae/payments/v1/sessions"},
		{"encoded NUL", "/checkout/v3/..%00/payments/v1/sessions"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.up.Reset()
			resp, body := rawGet(t, e, c.path)
			checkRefusal(t, e.up, resp, body, 403, "unmatched_path")
		})
	}
	// An ordinary escape in an ID still goes through, as sent.
	e.up.Reset()
	if resp, _ := rawGet(t, e, "/checkout/v3/orders/a%20b"); resp.StatusCode != 200 {
		t.Errorf("an escaped space: status %d, want 200", resp.StatusCode)
	}
	if r := e.up.Requests(); len(r) != 1 || r[0].Path != "/checkout/v3/orders/a%20b" {
		t.Errorf("upstream received %+v, want /checkout/v3/orders/a%%20b", r)
	}
}

// rawGet sends GET path, exactly as written, with shop1's credentials, and
// reads the answer.
func rawGet(t *testing.T, e *env, path string) (*http.Response, []byte) {
	t.Helper()
	resp := rawRequest(t, e.addr(), "GET "+path+" HTTP/1.1", "Host: "+e.addr(),
		"Authorization: "+basicAuth(klarnaUser, klarnaPassword), "Connection: close")
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp, body
}
