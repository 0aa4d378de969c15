package module_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpproxy"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// statusDoc is the status JSON as a client reads it.
type statusDoc struct {
	Verdict        string `json:"verdict"`
	Summary        string `json:"summary"`
	SwitchComplete bool   `json:"switch_complete"`
	ShimInUse      bool   `json:"shim_in_use"`
	Window         string `json:"window"`
	GeneratedAt    string `json:"generated_at"`
	Source         string `json:"source"`
	Error          string `json:"error"`
	Evidence       struct {
		ObservingSince *string `json:"observing_since"`
		Enough         bool    `json:"enough"`
		CallsSeen      bool    `json:"calls_seen"`
	} `json:"evidence"`
	ActionRequired []struct {
		Store string   `json:"store"`
		Rows  []docRow `json:"rows"`
	} `json:"action_required"`
	Services []docRow `json:"services"`
}

type docRow struct {
	Service        string   `json:"service"`
	ServiceName    string   `json:"service_name"`
	FromHost       string   `json:"from_host"`
	ToHost         string   `json:"to_host"`
	Credential     string   `json:"credential"`
	Key            string   `json:"key"`
	State          string   `json:"state"`
	LastUsed       *string  `json:"last_used"`
	LastOK         *string  `json:"last_ok"`
	LastFailed     *string  `json:"last_failed"`
	LastFailure    string   `json:"last_failure"`
	Clients        []string `json:"clients"`
	ActionRequired string   `json:"action_required"`
	Note           string   `json:"note"`
}

// row finds the used row of service from host, or fails.
func (d statusDoc) row(t *testing.T, service, from string) docRow {
	t.Helper()
	for _, r := range d.Services {
		if r.Service == service && r.FromHost == from {
			return r
		}
	}
	t.Fatalf("no %s row from %s in %+v", service, from, d.Services)
	return docRow{}
}

func getStatusJSON(t *testing.T, url string, hdr map[string]string) statusDoc {
	t.Helper()
	return getStatusJSONCode(t, url, hdr, http.StatusOK)
}

func getStatusJSONCode(t *testing.T, url string, hdr map[string]string, code int) statusDoc {
	t.Helper()
	if hdr == nil {
		hdr = map[string]string{"Accept": "application/json"}
	}
	resp, body := do(t, shimtest.Client(), "GET", url, "", "", "", hdr)
	if resp.StatusCode != code {
		t.Fatalf("GET %s: %d, want %d: %s", url, resp.StatusCode, code, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	var doc statusDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, body)
	}
	return doc
}

// kustomKeyGet sends what an app that already switched sends: its own
// Kustom key, alone, as Kustom documents it.
func kustomKeyGet(t *testing.T, c *http.Client, url, host string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if host != "" {
		req.Host = host
	}
	req.Header.Set("Authorization", "Basic "+kustomKey)
	req.Header.Set("User-Agent", "kustom-php/1.2 (switched)")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestSwitchStatusEndToEnd(t *testing.T) {
	t.Run("fresh start: not complete, not enough evidence", func(t *testing.T) {
		e := startSwitchShim(t, testupstream.New(t), "", "")
		doc := getStatusJSON(t, e.base+"/kustom/status", nil)
		if doc.SwitchComplete || doc.Verdict != "not_enough_evidence" || doc.Evidence.Enough || doc.Evidence.CallsSeen ||
			doc.Evidence.ObservingSince == nil || len(doc.ActionRequired) != 0 {
			t.Errorf("fresh start: %+v", doc)
		}
		for _, r := range doc.Services {
			if r.State != "not_used" {
				t.Errorf("row %+v", r)
			}
		}
		s := shimtest.ScrapeURL(t, e.base+"/metrics")
		since := s.Value("kustom_shim_observing_since_timestamp_seconds", nil)
		if d := time.Since(time.Unix(int64(since), 0)); d < -2*time.Second || d > time.Minute {
			t.Errorf("observing_since gauge %v is %v from now", since, d)
		}
	})

	t.Run("sidecar with a swapped key: bridged, store named, curl listed", func(t *testing.T) {
		curl := shimtest.Tool(t, "curl", "curl")
		e := startSwitchShim(t, testupstream.New(t), "", "")
		out, err := exec.Command(curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", klarnaUser+":"+klarnaPassword,
			e.base+"/checkout/v3/orders/ord-1").CombinedOutput()
		if err != nil || string(out) != "200" {
			t.Fatalf("curl: %v %s", err, out)
		}
		doc := getStatusJSON(t, e.base+"/kustom/status", nil)
		r := doc.row(t, "checkout", "local")
		if r.State != "bridged" || r.Credential != "shop1" || r.Key != "swapped" || r.ToHost != "api.kustom.co" ||
			len(r.Clients) != 1 || !strings.HasPrefix(r.Clients[0], "curl/") || r.LastOK == nil ||
			!strings.Contains(r.ActionRequired, "base URL") {
			t.Errorf("row %+v", r)
		}
		if doc.SwitchComplete || doc.Verdict != "action_required" || len(doc.ActionRequired) != 1 ||
			doc.ActionRequired[0].Store != "shop1" || !strings.Contains(doc.Summary, "store shop1") {
			t.Errorf("report %+v", doc)
		}
		s := shimtest.ScrapeURL(t, e.base+"/metrics")
		labels := map[string]string{"service": "checkout", "from_host": "local", "to_host": "api.kustom.co",
			"credential": "shop1", "key": "swapped"}
		for _, m := range []string{"kustom_shim_last_used_timestamp_seconds", "kustom_shim_last_success_timestamp_seconds"} {
			if v := s.Value(m, labels); time.Since(time.Unix(int64(v), 0)) > time.Minute {
				t.Errorf("%s%v = %v", m, labels, v)
			}
		}
		promtoolCheckMetrics(t, s.Text)
	})

	t.Run("Kustom unreachable: failing, with the reason", func(t *testing.T) {
		e := startSwitchShim(t, testupstream.Down(t), "", "")
		if code := send(t, e.base, "GET", "/checkout/v3/orders/ord-1", "", klarnaUser, klarnaPassword); code != http.StatusBadGateway {
			t.Fatalf("status %d, want 502", code)
		}
		doc := getStatusJSON(t, e.base+"/kustom/status", nil)
		r := doc.row(t, "checkout", "local")
		if r.State != "failing" || r.LastFailure != "upstream_unreachable" || r.LastFailed == nil || r.LastOK != nil ||
			!strings.Contains(r.ActionRequired, "could not reach api.kustom.co") {
			t.Errorf("row %+v", r)
		}
		if doc.SwitchComplete || doc.Verdict != "failing" || !strings.Contains(doc.Summary, "upstream_unreachable") {
			t.Errorf("report %+v", doc)
		}
		s := shimtest.ScrapeURL(t, e.base+"/metrics")
		if v := s.Value("kustom_shim_last_failure_timestamp_seconds", map[string]string{"reason": "upstream_unreachable",
			"credential": "shop1", "key": "swapped"}); v == 0 {
			t.Errorf("no last_failure series:\n%s", s.Text)
		}
		if s.Series("kustom_shim_last_success_timestamp_seconds") != 0 {
			t.Error("a success recorded for a call that never reached Kustom")
		}
	})

	t.Run("own Kustom key through intercept_connect: switched, key kept", func(t *testing.T) {
		up := testupstream.New(t)
		e := startSwitchShim(t, up, "", "default_target none\nintercept_connect\nunknown_credentials keep\n")
		pool, _ := caddyRoot(t, e.shim)
		t.Setenv("HTTPS_PROXY", e.base)
		t.Setenv("NO_PROXY", "")
		proxyFunc := httpproxy.FromEnvironment().ProxyFunc()
		tr := &http.Transport{Proxy: func(r *http.Request) (*url.URL, error) { return proxyFunc(r.URL) },
			TLSClientConfig: &tls.Config{RootCAs: pool}}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
		shimtest.WaitFor(t, "the intercepted host's certificate", 15*time.Second, func() bool {
			req, _ := http.NewRequest("GET", "https://api.kustom.co/", nil)
			resp, err := c.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			return err == nil
		})
		if code := kustomKeyGet(t, c, "https://api.kustom.co/checkout/v3/orders/ord-1", ""); code != 200 {
			t.Fatalf("status %d", code)
		}
		got := up.Requests()
		if last := got[len(got)-1]; last.Header.Get("Authorization") != "Basic "+kustomKey || last.Host != "api.kustom.co" {
			t.Errorf("upstream got %q for %s", last.Header.Get("Authorization"), last.Host)
		}
		doc := getStatusJSON(t, e.base+"/kustom/status", nil)
		r := doc.row(t, "checkout", "api.kustom.co")
		if r.State != "switched" || r.Key != "kept" || r.Credential != "" || r.ActionRequired != "" ||
			len(r.Clients) != 1 || r.Clients[0] != "kustom-php/1.2 (switched)" || !strings.Contains(r.Note, "remove that override") {
			t.Errorf("row %+v", r)
		}
		// Fresh: switched calls alone are not yet enough.
		if doc.SwitchComplete || doc.Verdict != "not_enough_evidence" || len(doc.ActionRequired) != 0 {
			t.Errorf("report %+v", doc)
		}
	})

	t.Run("Kustom answers 401 to a kept key: key_rejected", func(t *testing.T) {
		up := testupstream.New(t)
		up.Handle(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error_code":"UNAUTHORIZED","error_messages":["Bad credentials"],"correlation_id":"c1"}`)
		})
		e := startSwitchShim(t, up, "", "unknown_credentials keep\n")
		if code := kustomKeyGet(t, shimtest.Client(), e.base+"/ordermanagement/v1/orders/ord-1", "api.kustom.co"); code != 401 {
			t.Fatalf("status %d", code)
		}
		doc := getStatusJSON(t, e.base+"/kustom/status", nil)
		r := doc.row(t, "order_management", "api.kustom.co")
		if r.State != "key_rejected" || r.LastFailure != "kustom_rejected_key" || r.Key != "kept" ||
			!strings.Contains(r.ActionRequired, "Generate new") {
			t.Errorf("row %+v", r)
		}
		if doc.SwitchComplete || doc.Verdict != "failing" || len(doc.ActionRequired) != 1 || doc.ActionRequired[0].Store != "" {
			t.Errorf("report %+v", doc)
		}
	})

	t.Run("a short window with only switched calls: complete", func(t *testing.T) {
		e := startSwitchShim(t, testupstream.New(t), "window 4s", "unknown_credentials keep\n")
		if code := kustomKeyGet(t, shimtest.Client(), e.base+"/checkout/v3/orders/ord-1", "api.kustom.co"); code != 200 {
			t.Fatalf("status %d", code)
		}
		doc := getStatusJSON(t, e.base+"/kustom/status", nil)
		if doc.SwitchComplete || doc.Verdict != "not_enough_evidence" || !strings.Contains(doc.Summary, "of 4 seconds") {
			t.Errorf("before the window: %+v", doc)
		}
		start := time.Now()
		shimtest.WaitFor(t, "the switch to count as complete", 15*time.Second, func() bool {
			kustomKeyGet(t, shimtest.Client(), e.base+"/checkout/v3/orders/ord-1", "api.kustom.co")
			doc = getStatusJSON(t, e.base+"/kustom/status", nil)
			return doc.SwitchComplete
		})
		if time.Since(start) < 2*time.Second || doc.Verdict != "complete" || !doc.Evidence.Enough || !doc.Evidence.CallsSeen {
			t.Errorf("complete after %v: %+v", time.Since(start), doc)
		}
		if r := doc.row(t, "checkout", "api.kustom.co"); r.State != "switched" {
			t.Errorf("row %+v", r)
		}
		// One call through the sidecar with a Klarna key takes it back.
		if code := send(t, e.base, "GET", "/checkout/v3/orders/ord-1", "", klarnaUser, klarnaPassword); code != 200 {
			t.Fatalf("status %d", code)
		}
		if doc = getStatusJSON(t, e.base+"/kustom/status", nil); doc.SwitchComplete || doc.Verdict != "action_required" {
			t.Errorf("after a bridged call: %+v", doc)
		}
	})
}
