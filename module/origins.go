package module

import (
	"net/http"
	"strings"
)

// Origins is the pair of origins between which absolute API URLs are
// translated: Upstream is where the request went (https://api.kustom.co),
// Client is the origin the client addressed (http://localhost:8080 for a
// sidecar, https://api.klarna.com behind DNS). Klarna's SDKs store the
// Location of a created order and send their next call there, so a URL that
// escaped to the upstream origin would take the app around the shim.
type Origins struct {
	Upstream string
	Client   string
}

// ClientOrigin is the origin r was addressed to, as the client wrote it, or
// "" for a request without a Host (HTTP/1.0), whose URLs become relative.
func ClientOrigin(r *http.Request) string {
	if r.Host == "" {
		return ""
	}
	if r.TLS != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// ToClient rewrites u from the upstream origin to the client origin.
func (o Origins) ToClient(u string) (string, bool) { return RewriteOrigin(u, o.Upstream, o.Client) }

// ToUpstream rewrites u from the client origin to the upstream origin.
func (o Origins) ToUpstream(u string) (string, bool) { return RewriteOrigin(u, o.Client, o.Upstream) }

// RewriteOrigin replaces the origin from at the start of the absolute URL u
// with to. Scheme and host compare case-insensitively and a default port
// written out (:443, :80) matches its absence, as URL equivalence has it. A
// URL on any other origin, a relative URL and a URL whose host merely starts
// with from's host (api.kustom.co.evil.example) are left alone.
func RewriteOrigin(u, from, to string) (string, bool) {
	scheme, host, ok := strings.Cut(from, "://")
	if !ok || len(u) < len(scheme)+3 || !strings.EqualFold(u[:len(scheme)+3], scheme+"://") {
		return u, false
	}
	defaultPort := ":443"
	if strings.EqualFold(scheme, "http") {
		defaultPort = ":80"
	}
	// Host: api.klarna.com:443 and Host: api.klarna.com are one origin.
	if len(host) > len(defaultPort) && strings.HasSuffix(host, defaultPort) {
		host = host[:len(host)-len(defaultPort)]
	}
	rest := u[len(scheme)+3:]
	if len(rest) < len(host) || !strings.EqualFold(rest[:len(host)], host) {
		return u, false
	}
	rest = rest[len(host):]
	if !strings.Contains(host, ":") {
		rest = strings.TrimPrefix(rest, defaultPort)
	}
	if rest != "" && rest[0] != '/' && rest[0] != '?' && rest[0] != '#' {
		return u, false
	}
	if to == "" {
		if strings.HasPrefix(rest, "//") {
			// As a relative reference "//x/…" would name another host.
			return u, false
		}
		if rest == "" || rest[0] != '/' {
			rest = "/" + rest // a relative reference must still name a path
		}
	}
	return to + rest, true
}

// urlHeaders are the response headers that carry absolute API URLs.
var urlHeaders = []string{"Location", "Content-Location"}

// rewriteHeaderURLs applies o.ToClient to every URL-carrying header of h.
func rewriteHeaderURLs(h http.Header, o Origins) {
	for _, name := range urlHeaders {
		vals := h[name]
		for i, v := range vals {
			if nv, ok := o.ToClient(v); ok {
				vals[i] = nv
			}
		}
	}
}
