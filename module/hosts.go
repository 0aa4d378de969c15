package module

import (
	"fmt"
	"net"
	"sort"
	"strings"
)

// The two API hosts Kustom documents. Every Klarna region (EU, NA, OC) lands
// on the same Kustom host; should the Kustom Portal give a region-specific
// host, `map` adds it (see Handler.Map).
const (
	KustomProduction = "api.kustom.co"
	KustomPlayground = "api.playground.kustom.co"
)

// LocalHost is the from_host label for a request that addressed the shim
// itself (a sidecar reached at localhost:8080) rather than an API host. It is
// a fixed label so that whatever Host a caller sends never becomes a series.
const LocalHost = "local"

// DefaultHostMap is the Klarna → Kustom map of the migration facts. It is a
// function, not a variable, so that no caller can change it for everyone.
func DefaultHostMap() map[string]string {
	return map[string]string{
		"api.klarna.com":               KustomProduction,
		"api-na.klarna.com":            KustomProduction,
		"api-oc.klarna.com":            KustomProduction,
		"api.playground.klarna.com":    KustomPlayground,
		"api-na.playground.klarna.com": KustomPlayground,
		"api-oc.playground.klarna.com": KustomPlayground,
	}
}

// foreignDomains are the registrable domains whose hosts are never served by
// the default target: a request for pay.klarna.com or js.kustom.co reaching
// the shim is a misrouted browser or a typo, and sending it to the Kustom API
// with swapped credentials would be wrong in both cases.
var foreignDomains = []string{"klarna.com", "kustom.co", "klarna.net"}

// DefaultTarget values accepted in the config.
const (
	TargetProduction = "production"
	TargetPlayground = "playground"
	TargetNone       = "none"
)

// Route is where one request goes. Both fields are bounded label values: they
// come from the host map or are LocalHost, never from the request as such.
type Route struct {
	FromHost string // API host the client addressed, or LocalHost
	ToHost   string // Kustom (or mapped) host the request is sent to
}

// HostMap decides the target of a request from its Host header.
type HostMap struct {
	routes        map[string]Route // keyed by normalised from-host, including to-hosts themselves
	defaultTarget string           // "" when requests for other hosts are refused
}

// NewHostMap merges overrides into DefaultHostMap. defaultTarget is one of the
// Target* constants ("" means production).
func NewHostMap(overrides map[string]string, defaultTarget string) (*HostMap, error) {
	merged := DefaultHostMap()
	seen := map[string]string{}
	// In sorted order, so that the error for two spellings of one host (the
	// Caddyfile hands both on for this check) names them the same way on
	// every load rather than in map order.
	froms := make([]string, 0, len(overrides))
	for from := range overrides {
		froms = append(froms, from)
	}
	sort.Strings(froms)
	for _, from := range froms {
		to := overrides[from]
		if err := checkHostname(from); err != nil {
			return nil, fmt.Errorf("map: from-host %q: %v", from, err)
		}
		if err := checkHostname(to); err != nil {
			return nil, fmt.Errorf("map: to-host %q: %v", to, err)
		}
		f, t := NormalizeHost(from), NormalizeHost(to)
		if other, dup := seen[f]; dup {
			return nil, fmt.Errorf("map: from-hosts %q and %q are the same host", other, from)
		}
		seen[f] = from
		merged[f] = t
	}
	hm := &HostMap{routes: make(map[string]Route, 2*len(merged)+2)}
	switch defaultTarget {
	case "", TargetProduction:
		hm.defaultTarget = KustomProduction
	case TargetPlayground:
		hm.defaultTarget = KustomPlayground
	case TargetNone:
	default:
		return nil, fmt.Errorf("default_target: %q is not one of production, playground, none", defaultTarget)
	}
	// An app that already switched keeps working: every Kustom host, and every
	// host something maps to, routes to itself.
	for _, to := range append([]string{KustomProduction, KustomPlayground}, values(merged)...) {
		hm.routes[to] = Route{FromHost: to, ToHost: to}
	}
	for from, to := range merged {
		hm.routes[from] = Route{FromHost: from, ToHost: to}
	}
	return hm, nil
}

// Resolve returns the route for a request's Host header, or ok=false when the
// host is a Klarna or Kustom host the map does not know (pay.klarna.com, a
// typo) or when there is no default target.
func (hm *HostMap) Resolve(host string) (Route, bool) {
	h := NormalizeHost(host)
	if r, ok := hm.routes[h]; ok {
		return r, true
	}
	if hm.defaultTarget == "" || isForeign(h) {
		return Route{}, false
	}
	return Route{FromHost: LocalHost, ToHost: hm.defaultTarget}, true
}

// Lookup is Resolve for a host that must be in the map itself: the default
// target does not apply. It answers whether the host is a known API host.
func (hm *HostMap) Lookup(host string) (Route, bool) {
	r, ok := hm.routes[NormalizeHost(host)]
	return r, ok
}

// ToHosts lists every host a request may be sent to, sorted, so that one
// proxy per host can be provisioned up front.
func (hm *HostMap) ToHosts() []string {
	seen := map[string]bool{}
	for _, r := range hm.routes {
		seen[r.ToHost] = true
	}
	if hm.defaultTarget != "" {
		seen[hm.defaultTarget] = true
	}
	out := make([]string, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// FromHosts lists the hosts the map answers for (not the default target).
func (hm *HostMap) FromHosts() []string {
	out := make([]string, 0, len(hm.routes))
	for h := range hm.routes {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// RewriteToKustom turns an absolute https URL on a mapped Klarna API host into
// the same URL on its Kustom host (https://api.klarna.com/checkout/v3/orders/1
// → https://api.kustom.co/checkout/v3/orders/1). Other URLs are left alone.
func (hm *HostMap) RewriteToKustom(u string) (string, bool) {
	const scheme = "https://"
	if len(u) <= len(scheme) || !strings.EqualFold(u[:len(scheme)], scheme) {
		return u, false
	}
	end := strings.IndexAny(u[len(scheme):], "/?#")
	authority := u[len(scheme):]
	if end >= 0 {
		authority = authority[:end]
	}
	if strings.Contains(authority, "@") {
		return u, false
	}
	if h, port, err := net.SplitHostPort(authority); err == nil {
		if port != "443" {
			return u, false
		}
		authority = h
	}
	r, ok := hm.routes[NormalizeHost(authority)]
	if !ok || r.FromHost == r.ToHost {
		return u, false
	}
	return RewriteOrigin(u, scheme+authority, scheme+r.ToHost)
}

// IsKlarnaHost tells whether host is a legacy Klarna host: traffic on it means
// the app has not switched yet.
func IsKlarnaHost(host string) bool {
	h := NormalizeHost(host)
	return h == "klarna.com" || strings.HasSuffix(h, ".klarna.com")
}

// NormalizeHost lowercases host and strips a port and a trailing dot, the
// forms in which one name reaches us in a Host header.
func NormalizeHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(host, ".")
	// Host names are ASCII; ToLower allocates only when it must.
	return strings.ToLower(host)
}

func isForeign(h string) bool {
	for _, d := range foreignDomains {
		if h == d || strings.HasSuffix(h, "."+d) {
			return true
		}
	}
	return false
}

// checkHostname accepts a bare host name as written in the config (any case,
// an optional trailing dot), and nothing that carries a scheme, port or path.
func checkHostname(h string) error {
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	if h == "" {
		return fmt.Errorf("empty")
	}
	if len(h) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Errorf("not a host name (use a bare name such as api.kustom.co, without scheme, port or path)")
		}
	}
	return nil
}

func values(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
