package module

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// TestRewriteOrigin: an absolute URL on the upstream origin is moved to the
// client's origin, and nothing else is touched: a URL that only looks like
// the origin must never be rewritten into one the app trusts.
func TestRewriteOrigin(t *testing.T) {
	const (
		up     = "https://api.kustom.co"
		client = "http://localhost:8080"
	)
	cases := []struct {
		name, u, from, to string
		want              string // "" = left alone
	}{
		{"exact origin", up, up, client, client},
		{"path", up + "/checkout/v3/orders/ord-1", up, client, client + "/checkout/v3/orders/ord-1"},
		{"root path", up + "/", up, client, client + "/"},
		{"query", up + "?offset=20&size=20", up, client, client + "?offset=20&size=20"},
		{"path query fragment", up + "/settlements/v1/payouts?offset=20#x", up, client, client + "/settlements/v1/payouts?offset=20#x"},
		{"fragment", up + "#top", up, client, client + "#top"},
		{"explicit default port", "https://api.kustom.co:443/checkout/v3/orders/ord-1", up, client, client + "/checkout/v3/orders/ord-1"},
		{"explicit default port alone", "https://api.kustom.co:443", up, client, client},
		{"upper-case scheme and host", "HTTPS://API.KUSTOM.CO/checkout/v3/orders/Ord-1", up, client, client + "/checkout/v3/orders/Ord-1"},
		{"mixed-case host", "https://Api.Kustom.Co:443/x", up, client, client + "/x"},
		{"path case kept", up + "/Checkout/V3/Orders", up, client, client + "/Checkout/V3/Orders"},
		{"to a Klarna origin", up + "/x", up, "https://api.klarna.com", "https://api.klarna.com/x"},
		{"to an origin with port", up + "/x", up, "https://api.klarna.com:8443", "https://api.klarna.com:8443/x"},
		{"from an origin with port", "http://localhost:8080/checkout/v3/orders/1", client, up, up + "/checkout/v3/orders/1"},

		{"different host", "https://api.playground.kustom.co/x", up, client, ""},
		{"different host, same suffix", "https://xapi.kustom.co/x", up, client, ""},
		{"host prefix with dot", "https://api.kustom.co.evil.example/x", up, client, ""},
		{"host prefix without dot", "https://api.kustom.coevil/x", up, client, ""},
		{"host prefix with dash", "https://api.kustom.co-evil.example/", up, client, ""},
		{"userinfo before host", "https://user@api.kustom.co/x", up, client, ""},
		{"host as userinfo", "https://api.kustom.co@evil.example/x", up, client, ""},
		{"host and port as userinfo", "https://api.kustom.co:443@evil.example/x", up, client, ""},
		{"backslash", `https://api.kustom.co\@evil.example/x`, up, client, ""},
		{"other port", "https://api.kustom.co:8443/x", up, client, ""},
		{"port starting with 443", "https://api.kustom.co:4430/x", up, client, ""},
		{"port 80 on https", "https://api.kustom.co:80/x", up, client, ""},
		{"empty port", "https://api.kustom.co:/x", up, client, ""},
		{"http instead of https", "http://api.kustom.co/x", up, client, ""},
		{"https instead of http", "https://localhost:8080/x", client, up, ""},
		{"client origin, other port", "http://localhost:80801/x", client, up, ""},
		{"client origin, no port", "http://localhost/x", client, up, ""},
		{"relative", "/checkout/v3/orders/ord-1", up, client, ""},
		{"scheme-relative", "//api.kustom.co/x", up, client, ""},
		{"leading space", " https://api.kustom.co/x", up, client, ""},
		{"other scheme", "wss://api.kustom.co/x", up, client, ""},
		{"empty", "", up, client, ""},
		{"truncated", "https://api.kustom.c", up, client, ""},
		{"origin in path", "https://evil.example/https://api.kustom.co/x", up, client, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := RewriteOrigin(c.u, c.from, c.to)
			if c.want == "" {
				if ok || got != c.u {
					t.Errorf("RewriteOrigin(%q, %q, %q) = %q, %v; want it left alone", c.u, c.from, c.to, got, ok)
				}
				return
			}
			if !ok || got != c.want {
				t.Errorf("RewriteOrigin(%q, %q, %q) = %q, %v; want %q, true", c.u, c.from, c.to, got, ok, c.want)
			}
		})
	}
}

func TestOriginsBothWays(t *testing.T) {
	cases := []struct {
		o                Origins
		upstreamURL      string
		clientURL        string
		clientURLVariant string // another spelling of clientURL that maps to upstreamURL
	}{
		{Origins{Upstream: "https://api.kustom.co", Client: "http://localhost:8080"},
			"https://api.kustom.co/checkout/v3/orders/o1", "http://localhost:8080/checkout/v3/orders/o1", "HTTP://LOCALHOST:8080/checkout/v3/orders/o1"},
		{Origins{Upstream: "https://api.kustom.co", Client: "https://api.klarna.com"},
			"https://api.kustom.co/x", "https://api.klarna.com/x", "https://api.klarna.com:443/x"},
		{Origins{Upstream: "https://api.playground.kustom.co", Client: "https://api.playground.klarna.com"},
			"https://api.playground.kustom.co/hpp/v1/sessions/s1", "https://api.playground.klarna.com/hpp/v1/sessions/s1", "https://API.playground.klarna.com/hpp/v1/sessions/s1"},
	}
	for _, c := range cases {
		if got, ok := c.o.ToClient(c.upstreamURL); !ok || got != c.clientURL {
			t.Errorf("%+v.ToClient(%q) = %q, %v; want %q", c.o, c.upstreamURL, got, ok, c.clientURL)
		}
		for _, u := range []string{c.clientURL, c.clientURLVariant} {
			if got, ok := c.o.ToUpstream(u); !ok || got != c.upstreamURL {
				t.Errorf("%+v.ToUpstream(%q) = %q, %v; want %q", c.o, u, got, ok, c.upstreamURL)
			}
		}
		// The upstream's own URL is not the client's, and the other way.
		if got, ok := c.o.ToUpstream(c.upstreamURL); ok {
			t.Errorf("%+v.ToUpstream(%q) rewrote it to %q", c.o, c.upstreamURL, got)
		}
		if got, ok := c.o.ToClient(c.clientURL); ok {
			t.Errorf("%+v.ToClient(%q) rewrote it to %q", c.o, c.clientURL, got)
		}
	}
}

func TestOriginClientOrigin(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "http://localhost:8080/checkout/v3/orders/o1", nil)
	if got := ClientOrigin(r); got != "http://localhost:8080" {
		t.Errorf("ClientOrigin(plain) = %q", got)
	}
	r = httptest.NewRequest(http.MethodGet, "https://api.klarna.com/checkout/v3/orders/o1", nil)
	r.TLS = &tls.ConnectionState{}
	if got := ClientOrigin(r); got != "https://api.klarna.com" {
		t.Errorf("ClientOrigin(TLS) = %q", got)
	}
	r.Host = "api.klarna.com:443"
	if got := ClientOrigin(r); got != "https://api.klarna.com:443" {
		t.Errorf("ClientOrigin(TLS, port) = %q", got)
	}
}

// TestOriginRewriteWithoutHost: an HTTP/1.0 request may come without a Host;
// the Location it gets back must still be a usable URL (relative), and no
// URL it sends may be mistaken for the empty origin.
func TestOriginRewriteWithoutHost(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/checkout/v3/orders", nil)
	r.Host = ""
	o := Origins{Upstream: "https://api.kustom.co", Client: ClientOrigin(r)}
	for _, c := range []struct{ in, want string }{
		{"https://api.kustom.co/checkout/v3/orders/o1", "/checkout/v3/orders/o1"},
		{"https://api.kustom.co", "/"},
		{"https://api.kustom.co?offset=1", "/?offset=1"},
	} {
		got, _ := o.ToClient(c.in)
		if got == "http://"+strings.TrimPrefix(c.want, "/") || strings.HasPrefix(got, "http:///") {
			t.Fatalf("BUG: with no Host header %q becomes %q, a URL without a host", c.in, got)
		}
		u, err := url.Parse(got)
		if err != nil || u.Host == "" && !strings.HasPrefix(got, "/") {
			t.Errorf("with no Host header %q becomes %q, not a usable URL", c.in, got)
		}
		if u != nil && u.Host != "" && got != c.in {
			t.Errorf("with no Host header %q becomes %q", c.in, got)
		}
	}
	for _, u := range []string{"/checkout/v3/orders/o1", "https://evil.example/x", ""} {
		if got, ok := o.ToUpstream(u); ok {
			t.Errorf("with no Host header ToUpstream(%q) = %q", u, got)
		}
	}
}

func TestRewriteHeaderURLs(t *testing.T) {
	o := Origins{Upstream: "https://api.kustom.co", Client: "http://localhost:8080"}
	h := http.Header{
		"Location":         {"https://api.kustom.co/ordermanagement/v1/orders/o1/captures/c1"},
		"Content-Location": {"https://api.kustom.co/checkout/v3/orders/o1", "https://elsewhere.example/y"},
		"Link":             {"<https://api.kustom.co/x>; rel=next"},
		"Capture-Id":       {"c1"},
		"Refresh":          {"0; url=https://api.kustom.co/x"},
		"X-Url":            {"https://api.kustom.co/x"},
	}
	rewriteHeaderURLs(h, o)
	want := http.Header{
		"Location":         {"http://localhost:8080/ordermanagement/v1/orders/o1/captures/c1"},
		"Content-Location": {"http://localhost:8080/checkout/v3/orders/o1", "https://elsewhere.example/y"},
		"Link":             {"<https://api.kustom.co/x>; rel=next"},
		"Capture-Id":       {"c1"},
		"Refresh":          {"0; url=https://api.kustom.co/x"},
		"X-Url":            {"https://api.kustom.co/x"},
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("rewriteHeaderURLs:\n got %v\nwant %v", h, want)
	}

	// A relative or foreign Location is left as it is.
	h = http.Header{"Location": {"/checkout/v3/orders/o1"}}
	rewriteHeaderURLs(h, o)
	if h.Get("Location") != "/checkout/v3/orders/o1" {
		t.Errorf("relative Location changed to %q", h.Get("Location"))
	}
	h = http.Header{}
	rewriteHeaderURLs(h, o)
	if len(h) != 0 {
		t.Errorf("rewriteHeaderURLs added headers: %v", h)
	}
}

var rewriteSink string

func BenchmarkRewriteOrigin(b *testing.B) {
	cases := []struct{ name, u string }{
		{"match", "https://api.kustom.co/ordermanagement/v1/orders/0003a1b2-c3d4/captures/cap-1"},
		{"match_default_port", "HTTPS://API.KUSTOM.CO:443/checkout/v3/orders/o1"},
		{"other_host", "https://api.kustom.co.evil.example/x"},
		{"relative", "/checkout/v3/orders/o1"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rewriteSink, _ = RewriteOrigin(c.u, "https://api.kustom.co", "http://localhost:8080")
			}
		})
	}
}
