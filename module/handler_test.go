package module

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// These tests drive the handler alone, through httptest, with the tracker
// injected: no Caddy server, no kustom app, each in parallel. What a whole
// server adds (listeners, routes, TLS, reloads) is in the e2e tests.

const (
	unitUser   = "K1_unit"
	unitPass   = "unit-klarna-pw"
	unitKey    = "kco_test_api_unit-key"
	unitPassV  = "UNIT_TEST_KLARNA_PW"
	unitKeyVar = "UNIT_TEST_KUSTOM_KEY"
)

// unitHandler provisions h (defaults filled in) in front of up with one
// credential, and returns it with its tracker.
func unitHandler(t *testing.T, up *testupstream.Upstream, h *Handler) (*Handler, *Tracker) {
	t.Helper()
	if h == nil {
		h = new(Handler)
	}
	h.Upstream = "https://" + up.Addr
	h.TransportRaw = json.RawMessage(fmt.Sprintf(`{"protocol":"http","tls":{"ca":{"provider":"file","pem_files":[%q]}}}`, up.CAFile))
	if len(h.Credentials) == 0 {
		h.Credentials = []Credential{unitCredential(0)}
	}
	root, err := unitContext()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(root)
	t.Cleanup(cancel)
	tr := NewTracker(time.Now().Add(-time.Hour))
	// Caddy's config is not safe for concurrent provisioning (the apps it
	// loads on demand live in a plain map); serving is.
	unitProvisionMu.Lock()
	err = h.provision(ctx, func() *Tracker { return tr })
	unitProvisionMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h, tr
}

// unitContext is a Caddy context with an (empty) config of its own, which
// Caddy's reverse proxy needs to provision (it loads the events app); it is
// never run, so no listener opens.
var unitProvisionMu sync.Mutex

var unitContext = sync.OnceValues(func() (caddy.Context, error) {
	return caddy.ProvisionContext(&caddy.Config{Admin: &caddy.AdminConfig{Disabled: true}})
})

// unitCredential is shop1, with secrets from the environment as in
// production, and at most max calls in flight (0: no limit).
func unitCredential(max int) Credential {
	return Credential{Name: "shop1", KlarnaUsername: unitUser, KlarnaPassword: "{env." + unitPassV + "}",
		KustomAPIKey: "{env." + unitKeyVar + "}", MaxConcurrent: max}
}

// serve runs one request through h as Caddy's server would prepare it.
func serve(h *Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	repl := caddy.NewReplacer()
	r = caddyhttp.PrepareRequest(r, repl, w, new(caddyhttp.Server)) // a server without access logs
	repl.Set("http.request.uuid", "unit-correlation-id")
	if err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })); err != nil {
		w.Code = 599
		w.Body.WriteString(err.Error())
	}
	return w
}

func unitRequest(method, target, host, user, pass string, body string) *http.Request {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	r.Host = host
	if user != "" {
		r.SetBasicAuth(user, pass)
	}
	r.Header.Set("User-Agent", "unit-app/1")
	return r
}

func init() {
	// The secrets' environment, set once for every parallel test (t.Setenv
	// cannot be used with t.Parallel).
	_ = os.Setenv(unitPassV, unitPass)
	_ = os.Setenv(unitKeyVar, unitKey)
}

// TestHandlerRefusals: each refusing branch of the request path answers in
// Klarna's error shape with its reason, and the upstream receives nothing.
func TestHandlerRefusals(t *testing.T) {
	t.Parallel()
	up := testupstream.New(t)
	h, tr := unitHandler(t, up, nil)
	big := strings.Repeat("x", DefaultMaxRequestBody+1)
	inTunnel := func(r *http.Request, host string) *http.Request {
		return r.WithContext(context.WithValue(r.Context(), tunnelCtxKey{}, host))
	}
	cases := []struct {
		name   string
		req    *http.Request
		status int
		reason Reason
	}{
		{"headers too large", func() *http.Request {
			r := unitRequest("GET", "/checkout/v3/orders/o", "localhost", unitUser, unitPass, "")
			r.Header.Set("X-Big", strings.Repeat("a", DefaultMaxRequestHeaders))
			return r
		}(), 431, ReasonHeadersTooLarge},
		{"upgrade", func() *http.Request {
			r := unitRequest("GET", "/checkout/v3/orders/o", "localhost", unitUser, unitPass, "")
			r.Header.Set("Upgrade", "websocket")
			return r
		}(), 400, ReasonUpgradeRefused},
		{"CONNECT inside a tunnel", inTunnel(unitRequest("CONNECT", "api.kustom.co:443", "api.kustom.co:443", "", "", ""), "api.klarna.com"),
			403, ReasonConnectRefused},
		{"CONNECT without intercept_connect", unitRequest("CONNECT", "api.klarna.com:443", "api.klarna.com:443", "", "", ""),
			403, ReasonConnectRefused},
		{"another host inside a tunnel", inTunnel(unitRequest("GET", "/checkout/v3/orders/o", "api.kustom.co", unitUser, unitPass, ""), "api.klarna.com"),
			421, ReasonUnknownTarget},
		{"proxy-form for an unmapped host", func() *http.Request {
			r := unitRequest("GET", "http://example.com/checkout/v3/orders/o", "example.com", unitUser, unitPass, "")
			r.RequestURI = "http://example.com/checkout/v3/orders/o"
			return r
		}(), 403, ReasonProxyRefused},
		{"a Klarna host the map does not know", unitRequest("GET", "/checkout/v3/orders/o", "pay.klarna.com", unitUser, unitPass, ""),
			421, ReasonUnknownTarget},
		{"Klarna Payments", unitRequest("POST", "/payments/v1/sessions", "localhost", unitUser, unitPass, "{}"), 403, ReasonUnmatchedPath},
		{"no credentials", unitRequest("GET", "/checkout/v3/orders/o", "localhost", "", "", ""), 401, ReasonMissingCredentials},
		{"wrong password", unitRequest("GET", "/checkout/v3/orders/o", "localhost", unitUser, "nope", ""), 401, ReasonWrongPassword},
		{"unknown username", unitRequest("GET", "/checkout/v3/orders/o", "localhost", "K2_other", unitPass, ""), 401, ReasonUnknownUsername},
		{"body too large", unitRequest("POST", "/checkout/v3/orders", "localhost", unitUser, unitPass, big), 413, ReasonRequestTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := serve(h, c.req)
			var body struct {
				Code, CorrelationID string
				Messages            []string `json:"error_messages"`
			}
			_ = json.Unmarshal(w.Body.Bytes(), &body)
			if w.Code != c.status || w.Header().Get(ErrorHeader) != string(c.reason) ||
				w.Header().Get(CorrelationHeader) != "unit-correlation-id" || len(body.Messages) == 0 {
				t.Errorf("%d %q %s, want %d %q", w.Code, w.Header().Get(ErrorHeader), w.Body, c.status, c.reason)
			}
		})
	}
	t.Cleanup(func() {
		if n := len(up.Requests()); n != 0 {
			t.Errorf("upstream got %d requests", n)
		}
		if rows := tr.Local(); len(rows) != 0 {
			t.Errorf("refusals recorded as calls: %+v", rows)
		}
	})
}

// TestHandlerForwards: the paths that reach the upstream, what it received,
// what the client got, and the evidence recorded for the row.
func TestHandlerForwards(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		answer    int // the upstream's status; 0: the upstream is down
		req       func() *http.Request
		wantCode  int
		wantRow   UsageKey
		wantState string // "ok" or the Failure
	}{
		{"sidecar, swapped key", 200, func() *http.Request {
			return unitRequest("GET", "/checkout/v3/orders/o1", "localhost:8080", unitUser, unitPass, "")
		}, 200, UsageKey{Checkout, LocalHost, KustomProduction, "shop1", KeySwapped}, "ok"},
		{"Klarna host", 201, func() *http.Request {
			return unitRequest("POST", "/ordermanagement/v1/orders/o1/captures", "api.klarna.com", unitUser, unitPass, `{"captured_amount":1}`)
		}, 201, UsageKey{OrderManagement, "api.klarna.com", KustomProduction, "shop1", KeySwapped}, "ok"},
		{"Kustom rejects the key", 401, func() *http.Request {
			return unitRequest("GET", "/settlements/v1/payouts", "api.playground.klarna.com", unitUser, unitPass, "")
		}, 401, UsageKey{Settlement, "api.playground.klarna.com", KustomPlayground, "shop1", KeySwapped}, string(FailureKeyRejected)},
		{"Kustom answers 503", 503, func() *http.Request {
			return unitRequest("GET", "/hpp/v1/sessions/s1", "localhost", unitUser, unitPass, "")
		}, 503, UsageKey{HostedPaymentPage, LocalHost, KustomProduction, "shop1", KeySwapped}, string(Failure5xx)},
		{"Kustom unreachable", 0, func() *http.Request {
			return unitRequest("GET", "/customer-token/v1/tokens/t1", "localhost", unitUser, unitPass, "")
		}, 502, UsageKey{CustomerToken, LocalHost, KustomProduction, "shop1", KeySwapped}, string(FailureUnreachable)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			up := testupstream.New(t)
			up.Handle(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Location", "https://"+r.Host+r.URL.Path+"/x")
				w.WriteHeader(c.answer)
			})
			h, tr := unitHandler(t, up, nil)
			if c.answer == 0 {
				up.Server.Close()
			}
			w := serve(h, c.req())
			if w.Code != c.wantCode {
				t.Fatalf("status %d, want %d: %s", w.Code, c.wantCode, w.Body)
			}
			if c.answer != 0 {
				got := up.Requests()
				if len(got) != 1 || got[0].Header.Get("Authorization") != "Basic "+unitKey || got[0].Host != c.wantRow.ToHost ||
					got[0].Header.Get("X-Forwarded-For") != "" {
					t.Errorf("upstream got %+v", got)
				}
				if loc := w.Header().Get("Location"); c.wantRow.FromHost == "api.klarna.com" && !strings.HasPrefix(loc, "http://api.klarna.com/") &&
					!strings.HasPrefix(loc, "https://api.klarna.com/") {
					t.Errorf("Location %q not on the app's origin", loc)
				}
			}
			rows := tr.Local()
			if len(rows) != 1 || rows[0].UsageKey != c.wantRow || len(rows[0].Clients) != 1 || rows[0].Clients[0].UserAgent != "unit-app/1" {
				t.Fatalf("rows %+v", rows)
			}
			u := rows[0]
			switch c.wantState {
			case "ok":
				if u.LastOK.IsZero() || !u.LastFailed.IsZero() {
					t.Errorf("evidence %+v", u)
				}
			default:
				if !u.LastOK.IsZero() || string(u.LastFailure) != c.wantState {
					t.Errorf("evidence %+v, want failure %s", u, c.wantState)
				}
			}
		})
	}
}

// TestHandlerConcurrencyLimit: past max_concurrent the next call gets 429
// and never reaches the upstream; the slot comes back when a call ends.
func TestHandlerConcurrencyLimit(t *testing.T) {
	t.Parallel()
	up := testupstream.New(t)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/slow") {
			entered <- struct{}{}
			<-release
		}
	})
	h, _ := unitHandler(t, up, &Handler{Credentials: []Credential{unitCredential(1)}})
	done := make(chan int)
	go func() {
		done <- serve(h, unitRequest("GET", "/checkout/v3/orders/slow", "localhost", unitUser, unitPass, "")).Code
	}()
	<-entered
	if w := serve(h, unitRequest("GET", "/checkout/v3/orders/o2", "localhost", unitUser, unitPass, "")); w.Code != 429 ||
		w.Header().Get(ErrorHeader) != string(ReasonTooManyRequests) || w.Header().Get("Retry-After") == "" {
		t.Errorf("second call: %d %q", w.Code, w.Header().Get(ErrorHeader))
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("first call: %d", code)
	}
	if w := serve(h, unitRequest("GET", "/checkout/v3/orders/o3", "localhost", unitUser, unitPass, "")); w.Code != 200 {
		t.Errorf("after the slot came back: %d", w.Code)
	}
	if n := len(up.Requests()); n != 2 {
		t.Errorf("upstream got %d requests, want 2", n)
	}
}

// TestHandlerPassthroughKeepsCallerKey: a non-Kustom path with passthrough
// goes to its origin unchanged, with the caller's own Authorization, and is
// recorded as kept with no store.
func TestHandlerPassthroughKeepsCallerKey(t *testing.T) {
	t.Parallel()
	up := testupstream.New(t) // stands for Kustom and, as localhost, for Klarna
	_, port, _ := strings.Cut(up.Addr, ":")
	h, tr := unitHandler(t, up, &Handler{Unmatched: &UnmatchedPolicy{Action: "passthrough", URL: "https://localhost:" + port}})
	own := "Basic " + base64.StdEncoding.EncodeToString([]byte("K9_payments:own-pw"))
	r := unitRequest("POST", "/payments/v1/sessions", "localhost", "", "", "{}")
	r.Header.Set("Authorization", own)
	if w := serve(h, r); w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	got := up.Requests()
	if len(got) != 1 || got[0].Header.Get("Authorization") != own || got[0].Path != "/payments/v1/sessions" ||
		got[0].ServerName != "localhost" {
		t.Errorf("passthrough origin got %+v", got)
	}
	rows := tr.Local()
	if len(rows) != 1 || rows[0].Key != KeyKept || rows[0].Credential != "" || rows[0].Service != Unmatched ||
		rows[0].ToHost != "localhost" || rows[0].LastOK.IsZero() {
		t.Errorf("rows %+v", rows)
	}
}

// TestHandlerBrokenStreamIsAFailure: an answer whose body breaks off midway
// reached the app cut short; it is recorded as a failure, not a success.
func TestHandlerBrokenStreamIsAFailure(t *testing.T) {
	t.Parallel()
	up := testupstream.New(t)
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		w.WriteHeader(200)
		_, _ = w.Write([]byte(strings.Repeat("x", 1000)))
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	})
	h, tr := unitHandler(t, up, nil)
	func() {
		defer func() { _ = recover() }() // the handler passes the abort on, as Caddy's proxy does
		serve(h, unitRequest("GET", "/settlements/v1/reports/payout", "localhost", unitUser, unitPass, ""))
	}()
	rows := tr.Local()
	if len(rows) != 1 || !rows[0].LastOK.IsZero() || rows[0].LastFailure != FailureUnreachable {
		t.Errorf("rows %+v, want one failure and no success", rows)
	}
}
