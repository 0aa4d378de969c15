package module_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// startStatusShim runs a sidecar shim, as startSidecar does, whose site also
// has `kustom_status /kustom/status` (ordered first by the directive's own
// registration, with no `order` option) and whose globals are globals (nil
// for shim.Globals("")).
func startStatusShim(t *testing.T, globals func(*shimtest.Shim) string) *env {
	t.Helper()
	t.Setenv("KS_KLARNA_PW", klarnaPassword)
	t.Setenv("KS_KUSTOM_KEY", kustomKey)
	e := &env{shim: shimtest.New(t), up: testupstream.New(t), port: shimtest.FreePort(t)}
	e.base = fmt.Sprintf("http://127.0.0.1:%d", e.port)
	g := e.shim.Globals("")
	if globals != nil {
		g = globals(e.shim)
	}
	e.shim.Start(t, g+fmt.Sprintf(`
http://:%d {
%s	kustom_status /kustom/status
}
`, e.port, shopKustom(e.up, "")))
	return e
}

// callAPI sends one API call through the shim; host "" is the sidecar form.
func callAPI(t *testing.T, e *env, host, method, path string) {
	t.Helper()
	hdr := map[string]string{}
	if host != "" {
		hdr["Host"] = host
	}
	resp, body := do(t, shimtest.Client(), method, e.base+path, klarnaUser, klarnaPassword, "", hdr)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s (Host %q): %d %s", method, path, host, resp.StatusCode, body)
	}
}

// statusDoc is the status JSON as a client reads it.
type statusDoc struct {
	SwitchComplete bool     `json:"switch_complete"`
	ShimInUse      bool     `json:"shim_in_use"`
	Window         string   `json:"window"`
	GeneratedAt    string   `json:"generated_at"`
	ActionRequired []string `json:"action_required"`
	Services       []struct {
		Service        string  `json:"service"`
		ServiceName    string  `json:"service_name"`
		FromHost       string  `json:"from_host"`
		ToHost         string  `json:"to_host"`
		LastUsed       *string `json:"last_used"`
		ActionRequired string  `json:"action_required"`
		Note           string  `json:"note"`
	} `json:"services"`
}

func getStatusJSON(t *testing.T, url string, hdr map[string]string) statusDoc {
	t.Helper()
	resp, body := do(t, shimtest.Client(), "GET", url, "", "", "", hdr)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
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

// chromium finds the browser, or skips (fails under CI).
func chromium(t *testing.T) string {
	t.Helper()
	return shimtest.Tool(t, "chromium", "chromium", "/usr/bin/chromium", "chromium-browser", "google-chrome")
}

// runChromium runs one headless Chromium command, bounded to 60s, with a
// fresh profile and nothing that reaches the network on its own.
func runChromium(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-breakpad", "--no-proxy-server", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v (ctx %v)\nstderr:\n%s", args, err, ctx.Err(), stderr.String())
	}
	return stdout.String()
}

// screenshot renders url at width x height, checks the PNG and returns it. With KUSTOMSHIM_SCREENSHOT_DIR set it also keeps a copy
// there, to look at.
func screenshot(t *testing.T, bin, url, name string, width, height int) image.Image {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	runChromium(t, bin, "--screenshot="+path, fmt.Sprintf("--window-size=%d,%d", width, height), url)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", name, err)
	}
	if got := img.Bounds().Size(); got.X < width || got.Y < height {
		t.Errorf("screenshot %s is %v, want at least %dx%d", name, got, width, height)
	}
	if n := colours(img, 64); n < 16 {
		t.Errorf("screenshot %s has only %d colours: a blank or broken page", name, n)
	}
	if dir := os.Getenv("KUSTOMSHIM_SCREENSHOT_DIR"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Errorf("keeping screenshot: %v", err)
		}
	}
	return img
}

// hasColour tells whether some pixels of img have the colour #rrggbb: the
// page's own CSS was applied (the Content-Security-Policy let it through).
func hasColour(img image.Image, rgb uint32) bool {
	b := img.Bounds()
	n := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r>>8 == rgb>>16&0xff && g>>8 == rgb>>8&0xff && bl>>8 == rgb&0xff {
				if n++; n > 100 {
					return true
				}
			}
		}
	}
	return false
}

// colours counts distinct colours, up to limit.
func colours(img image.Image, limit int) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
			if len(seen) >= limit {
				return len(seen)
			}
		}
	}
	return len(seen)
}

var tableRow = regexp.MustCompile(`(?s)<tr[^>]*>(.*?)</tr>`)

// domRow returns the body row of the rendered table for service name whose
// cells mention from, or "".
func domRow(dom, name, from string) string {
	for _, m := range tableRow.FindAllStringSubmatch(dom, -1) {
		if strings.Contains(m[1], `<th scope="row">`+name+`</th>`) && strings.Contains(m[1], from) {
			return m[0]
		}
	}
	return ""
}

func TestStatusPageInBrowser(t *testing.T) {
	t.Run("before the switch", func(t *testing.T) {
		e := startStatusShim(t, nil)
		callAPI(t, e, "api.klarna.com", "GET", "/checkout/v3/orders/order-1")
		callAPI(t, e, "", "GET", "/ordermanagement/v1/orders/order-1")

		doc := getStatusJSON(t, e.base+"/kustom/status", map[string]string{"Accept": "application/json"})
		if doc.SwitchComplete || !doc.ShimInUse || doc.Window != "168h0m0s" {
			t.Errorf("switch_complete %v shim_in_use %v window %q", doc.SwitchComplete, doc.ShimInUse, doc.Window)
		}
		if len(doc.Services) != 5 {
			t.Fatalf("%d service rows, want the five services: %+v", len(doc.Services), doc.Services)
		}
		co := doc.Services[0]
		if co.Service != "checkout" || co.FromHost != "api.klarna.com" || co.ToHost != "api.kustom.co" ||
			co.LastUsed == nil || !strings.Contains(co.ActionRequired, "https://api.kustom.co") {
			t.Errorf("checkout row %+v", co)
		}
		if _, err := time.Parse(time.RFC3339, *co.LastUsed); err != nil {
			t.Errorf("last_used: %v", err)
		}
		om := doc.Services[1]
		if om.Service != "order_management" || om.FromHost != "local" || om.ToHost != "api.kustom.co" ||
			om.ActionRequired != "" || !strings.Contains(om.Note, "through the shim") {
			t.Errorf("order management row %+v", om)
		}
		if len(doc.ActionRequired) != 1 || !strings.HasPrefix(doc.ActionRequired[0], "Checkout: ") {
			t.Errorf("action_required %q", doc.ActionRequired)
		}
		// ?format=json is the same without a header; the status page was
		// answered by kustom_status, never proxied.
		if d := getStatusJSON(t, e.base+"/kustom/status?format=json", nil); d.SwitchComplete || len(d.Services) != 5 {
			t.Errorf("?format=json: %+v", d)
		}
		for _, r := range e.up.Requests() {
			if strings.HasPrefix(r.Path, "/kustom/") {
				t.Errorf("upstream received %s", r.Path)
			}
		}
		resp, _ := do(t, shimtest.Client(), "POST", e.base+"/kustom/status", "", "", "", nil)
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
		}
		resp, body := do(t, shimtest.Client(), "HEAD", e.base+"/kustom/status", "", "", "", nil)
		if resp.StatusCode != http.StatusOK || len(body) != 0 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Errorf("HEAD: %d %q %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}

		bin := chromium(t)
		url := e.base + "/kustom/status"
		dom := runChromium(t, bin, "--dump-dom", url)
		if dir := os.Getenv("KUSTOMSHIM_SCREENSHOT_DIR"); dir != "" {
			_ = os.WriteFile(filepath.Join(dir, "status-dom.html"), []byte(dom), 0o644)
		}
		for _, want := range []string{
			`id="action-required"`, "Action required", "Some services are still using Klarna endpoints",
			"<caption>", `<th scope="col">Host called</th>`,
		} {
			if !strings.Contains(dom, want) {
				t.Errorf("DOM lacks %q", want)
			}
		}
		if strings.Contains(dom, "All services use Kustom endpoints") {
			t.Error("DOM shows the success message while action is required")
		}
		row := domRow(dom, "Checkout", "api.klarna.com")
		if row == "" || !strings.Contains(row, "api.kustom.co") || !strings.Contains(row, `class="needs-action"`) ||
			!strings.Contains(row, "<time datetime=\""+*co.LastUsed+"\"") || !strings.Contains(row, "Switch the app calling api.klarna.com") {
			t.Errorf("checkout row in the DOM:\n%s", row)
		}
		row = domRow(dom, "Order management", "local")
		if row == "" || strings.Contains(row, "needs-action") || !strings.Contains(row, "None") {
			t.Errorf("order management row in the DOM:\n%s", row)
		}
		for _, name := range []string{"Settlement", "Hosted payment page", "Customer token"} {
			if row := domRow(dom, name, "Not used"); row == "" {
				t.Errorf("no %q row saying Not used", name)
			}
		}
		// The action list names the service and both hosts.
		_, section, _ := strings.Cut(dom, `id="action-required"`)
		section, _, _ = strings.Cut(section, "</section>")
		if !strings.Contains(section, "<strong>Checkout</strong>") || !strings.Contains(section, "api.klarna.com") {
			t.Errorf("action section:\n%s", section)
		}

		// The warning callout's background (--warn-bg) shows on a phone's
		// first screen.
		if img := screenshot(t, bin, url, "status-phone.png", 390, 844); !hasColour(img, 0xfff6e0) {
			t.Error("phone screenshot lacks the warning colour: the page's CSS was not applied")
		}
		screenshot(t, bin, url, "status-phone-full.png", 390, 1900) // the whole page, stacked
		screenshot(t, bin, url, "status-desktop.png", 1280, 800)
	})

	t.Run("after the switch", func(t *testing.T) {
		e := startStatusShim(t, nil)
		callAPI(t, e, "api.kustom.co", "GET", "/checkout/v3/orders/order-2")
		callAPI(t, e, "api.kustom.co", "GET", "/settlements/v1/payouts")

		doc := getStatusJSON(t, e.base+"/kustom/status", map[string]string{"Accept": "application/json"})
		if !doc.SwitchComplete || !doc.ShimInUse || len(doc.ActionRequired) != 0 {
			t.Errorf("switch_complete %v shim_in_use %v action_required %q", doc.SwitchComplete, doc.ShimInUse, doc.ActionRequired)
		}
		for _, s := range doc.Services {
			if s.ActionRequired != "" {
				t.Errorf("row needs action after the switch: %+v", s)
			}
		}

		bin := chromium(t)
		url := e.base + "/kustom/status"
		dom := runChromium(t, bin, "--dump-dom", url)
		if !strings.Contains(dom, "All services use Kustom endpoints") || !strings.Contains(dom, "Traffic still flows through the shim") {
			t.Errorf("DOM lacks the success message and shim note:\n%s", dom)
		}
		if strings.Contains(dom, `id="action-required"`) || strings.Contains(dom, "Some services are still using Klarna endpoints") {
			t.Error("DOM shows the action section after the switch")
		}
		if row := domRow(dom, "Checkout", "api.kustom.co"); row == "" || strings.Contains(row, "needs-action") {
			t.Errorf("checkout row in the DOM:\n%s", row)
		}
		if img := screenshot(t, bin, url, "status-phone-complete.png", 390, 844); !hasColour(img, 0xe9f7ef) {
			t.Error("phone screenshot lacks the success colour: the page's CSS was not applied")
		}
	})
}

// The directive's Caddyfile errors name the option at fault.
func TestStatusDirectiveErrors(t *testing.T) {
	cases := []struct{ site, want string }{
		{"kustom_status /s extra", `unexpected argument "extra"`},
		{"kustom_status /s {\n\t\twindow\n\t}", "window: wrong number of arguments"},
		{"kustom_status /s {\n\t\twindow 1h 2h\n\t}", "window: wrong number of arguments"},
		{"kustom_status /s {\n\t\twindow soon\n\t}", `window: "soon" is not a duration`},
		{"kustom_status /s {\n\t\twindow -1h\n\t}", `window: "-1h" must be positive`},
		{"kustom_status /s {\n\t\twindow 1h\n\t\twindow 2h\n\t}", "window already specified"},
		{"kustom_status /s {\n\t\twindw 1h\n\t}", `unrecognized kustom_status option "windw"`},
	}
	for _, c := range cases {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\t"+c.site+"\n}\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.site, err, c.want)
		}
	}
}
