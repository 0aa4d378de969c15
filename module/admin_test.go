package module_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/kustomshim/kustomshim/internal/shimtest"
)

func adminError(t *testing.T, method, url string, wantStatus int, wantErr string) *http.Response {
	t.Helper()
	resp, body := do(t, shimtest.Client(), method, url, "", "", "", nil)
	var e struct {
		Error string `json:"error"`
	}
	if resp.StatusCode != wantStatus || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, wantErr) {
		t.Errorf("%s %s: %d %s, want %d with error %q", method, url, resp.StatusCode, body, wantStatus, wantErr)
	}
	return resp
}

func TestAdminStatus(t *testing.T) {
	e := startShim(t, shimOpts{status: true, admin: true})
	admin := e.admin + "/kustom/status"
	callAPI(t, e, "api.klarna.com", "GET", "/checkout/v3/orders/order-1")
	callAPI(t, e, "api.playground.klarna.com", "GET", "/hpp/v1/sessions/s-1")

	doc := getStatusJSON(t, admin, nil)
	if doc.SwitchComplete || doc.Window != "168h0m0s" || len(doc.Services) != 5 || len(doc.ActionRequired) != 1 ||
		doc.ActionRequired[0].Store != "shop1" || len(doc.ActionRequired[0].Rows) != 2 {
		t.Fatalf("admin status %+v", doc)
	}
	co, hpp := doc.Services[0], doc.Services[3]
	if co.FromHost != "api.klarna.com" || co.ToHost != "api.kustom.co" || co.ActionRequired == "" || co.LastUsed == nil {
		t.Errorf("checkout row %+v", co)
	}
	if hpp.Service != "hosted_payment_page" || hpp.FromHost != "api.playground.klarna.com" || hpp.ToHost != "api.playground.kustom.co" ||
		!strings.Contains(hpp.ActionRequired, "https://api.playground.kustom.co") {
		t.Errorf("hosted payment page row %+v", hpp)
	}

	// The admin API and the status page give the same report.
	page := getStatusJSON(t, e.base+"/kustom/status?format=json", nil)
	doc.GeneratedAt, page.GeneratedAt = "", ""
	a, _ := json.Marshal(doc)
	b, _ := json.Marshal(page)
	if string(a) != string(b) {
		t.Errorf("admin API and status page differ:\n%s\n%s", a, b)
	}

	for q, want := range map[string]string{"24h": "24h0m0s", "7d": "168h0m0s", "90m": "1h30m0s"} {
		if d := getStatusJSON(t, admin+"?window="+q, nil); d.Window != want || d.SwitchComplete {
			t.Errorf("?window=%s: window %q switch_complete %v", q, d.Window, d.SwitchComplete)
		}
	}
	adminError(t, "GET", admin+"?window=soon", http.StatusBadRequest, "window")
	adminError(t, "GET", admin+"?window=-1h", http.StatusBadRequest, "must be positive")
	adminError(t, "GET", admin+"?window=0s", http.StatusBadRequest, "must be positive")
	resp := adminError(t, "POST", admin, http.StatusMethodNotAllowed, "not allowed")
	if resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("Allow %q", resp.Header.Get("Allow"))
	}
}

func TestAdminStatusWithoutKustomApp(t *testing.T) {
	s := shimtest.New(t)
	ports := s.StartPorts(t, make([]int, 2), func(p []int) string {
		return s.GlobalsWithAdmin(fmt.Sprintf("127.0.0.1:%d", p[0]), "") + fmt.Sprintf("http://:%d {\n\trespond \"ok\"\n}\n", p[1])
	})
	adminError(t, "GET", fmt.Sprintf("http://127.0.0.1:%d/kustom/status", ports[0]), http.StatusServiceUnavailable, "kustom app not running")
}
