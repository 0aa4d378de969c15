package module_test

import (
	"bytes"
	"context"
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

// TestStatusPageInBrowser renders the page for each verdict in headless
// Chromium at phone and desktop size: the one-line verdict, its colour, and
// the rows a merchant acts on.
func TestStatusPageInBrowser(t *testing.T) {
	bin := chromium(t)
	closed := testupstream.Down(t)
	cases := []struct {
		name, file string
		up         *testupstream.Upstream
		status     string // kustom_status options
		extra      string // kustom options
		calls      func(t *testing.T, e *env)
		verdict    string
		colour     uint32 // the verdict callout's background
		want       []string
	}{
		{name: "not enough evidence", file: "not-enough", verdict: "not_enough_evidence", colour: 0xeceef2,
			want: []string{"Not enough evidence yet", "no call has been seen"}},
		{name: "action required", file: "action", verdict: "action_required", colour: 0xfff6e0,
			calls: func(t *testing.T, e *env) {
				callAPI(t, e, "api.klarna.com", "GET", "/checkout/v3/orders/order-1")
				callAPI(t, e, "", "GET", "/ordermanagement/v1/orders/order-1")
			},
			want: []string{"Action required", `id="action-required"`, "<h3>store shop1</h3>", "Switch the app calling api.klarna.com",
				"may already show these services as switched", "Go-http-client/1.1"}},
		{name: "calls failing", file: "failing", up: closed, verdict: "failing", colour: 0xfdecec,
			calls: func(t *testing.T, e *env) {
				send(t, e.base, "GET", "/checkout/v3/orders/order-1", "", klarnaUser, klarnaPassword)
			},
			want: []string{"Calls failing", "upstream_unreachable", "could not reach api.kustom.co"}},
		{name: "complete", file: "complete", status: "window 2s", extra: "unknown_credentials keep\n", verdict: "complete", colour: 0xe9f7ef,
			calls: func(t *testing.T, e *env) {
				kustomKeyGet(t, shimtest.Client(), e.base+"/checkout/v3/orders/order-2", "api.kustom.co")
				shimtest.WaitFor(t, "two seconds of evidence", 10*time.Second, func() bool {
					kustomKeyGet(t, shimtest.Client(), e.base+"/checkout/v3/orders/order-2", "api.kustom.co")
					return getStatusJSON(t, e.base+"/kustom/status", nil).SwitchComplete
				})
			},
			want: []string{"Switch complete", "every call reached Kustom and worked", "Switched"}},
		{name: "prometheus unreachable", file: "unavailable", status: "prometheus http://" + closed.Addr,
			verdict: "unavailable", colour: 0xeceef2, want: []string{"Cannot tell", "could not be read", "Check that Prometheus is running"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := c.up
			if up == nil {
				up = testupstream.New(t)
			}
			e := startSwitchShim(t, up, c.status, c.extra)
			if c.calls != nil {
				c.calls(t, e)
			}
			code := http.StatusOK
			if c.verdict == "unavailable" {
				code = http.StatusServiceUnavailable
			}
			if doc := getStatusJSONCode(t, e.base+"/kustom/status", nil, code); doc.Verdict != c.verdict {
				t.Fatalf("verdict %q, want %q: %+v", doc.Verdict, c.verdict, doc)
			}
			url := e.base + "/kustom/status"
			dom := runChromium(t, bin, "--dump-dom", url)
			if dir := os.Getenv("KUSTOMSHIM_SCREENSHOT_DIR"); dir != "" {
				_ = os.WriteFile(filepath.Join(dir, "status-"+c.file+".html"), []byte(dom), 0o644)
			}
			if !strings.Contains(dom, `data-verdict="`+c.verdict+`"`) {
				t.Errorf("DOM lacks the verdict %q", c.verdict)
			}
			for _, w := range c.want {
				if !strings.Contains(dom, w) {
					t.Errorf("DOM lacks %q", w)
				}
			}
			if c.verdict != "complete" && strings.Contains(dom, "Switch complete") {
				t.Error("DOM says the switch is complete")
			}
			if img := screenshot(t, bin, url, "status-"+c.file+"-phone.png", 390, 844); !hasColour(img, c.colour) {
				t.Errorf("phone screenshot lacks the verdict colour #%06x: the page's CSS was not applied", c.colour)
			}
			if img := screenshot(t, bin, url, "status-"+c.file+"-desktop.png", 1280, 800); !hasColour(img, c.colour) {
				t.Errorf("desktop screenshot lacks the verdict colour #%06x", c.colour)
			}
		})
	}

	t.Run("status page is never proxied; methods", func(t *testing.T) {
		e := startShim(t, shimOpts{status: true})
		if d := getStatusJSON(t, e.base+"/kustom/status?format=json", map[string]string{}); len(d.Services) != 5 {
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
		{"kustom_status /s {\n\t\tprometheus\n\t}", "prometheus: wrong number of arguments"},
		{"kustom_status /s {\n\t\tprometheus http://a:9090 http://b:9090\n\t}", "prometheus: wrong number of arguments"},
		{"kustom_status /s {\n\t\tprometheus http://a:9090\n\t\tprometheus http://b:9090\n\t}", "prometheus already specified"},
		{"kustom_status /s {\n\t\tprometheus_match\n\t}", "prometheus_match: wrong number of arguments"},
	}
	for _, c := range cases {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\t"+c.site+"\n}\n"), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.site, err, c.want)
		}
	}
	// What only loading can tell: the URL and the matchers themselves. A
	// secret in the URL never shows in the error.
	for site, want := range map[string]string{
		"prometheus http://prom:9090\n\t\tprometheus_match `job=x`":                   "prometheus_match: ",
		"prometheus http://prom:9090\n\t\tprometheus_match `job=\"x\"} or vector(1)`": "not a list of label matchers",
		"prometheus_match `job=\"x\"`":                                                "prometheus_match: goes with prometheus",
	} {
		err := shimtest.LoadError(t, shimtest.New(t).Globals("")+"\n:0 {\n\tkustom_status /s {\n\t\t"+site+"\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", site, err, want)
		}
	}
	shim := shimtest.New(t)
	for url, want := range map[string]string{
		"ftp://prom:9090":                  "must be an http:// or https:// URL",
		"http://":                          "has no host",
		"http://admin:s3cret-pw@prom:9090": "user info in the URL is not allowed",
		"http://prom:9090/?x=1":            "must have no query",
	} {
		err := shimtest.LoadError(t, shim.Globals("")+"\n:0 {\n\tkustom_status /s {\n\t\tprometheus "+url+"\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), "prometheus: ") || !strings.Contains(err.Error(), want) {
			t.Errorf("prometheus %s: error %v, want %q", url, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("prometheus %s: the error shows the password: %v", url, err)
		}
	}
}
