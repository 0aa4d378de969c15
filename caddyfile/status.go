package caddyfile

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/kustomshim/kustomshim/module"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("kustom_status", parseKustomStatus)
	// Right after respond, so before metrics and kustom (which sits before
	// reverse_proxy): `kustom_status /kustom/status` answers its path in a
	// site whose `kustom` takes everything else, with no `order` or `route`.
	httpcaddyfile.RegisterDirectiveOrder("kustom_status", httpcaddyfile.After, "respond")
}

// parseKustomStatus sets up the status page from Caddyfile tokens:
//
//	kustom_status [<matcher>] {
//	    window <duration>
//	    prometheus <url>
//	    prometheus_match <label matchers>
//	}
//
// The duration takes any caddy.ParseDuration form (90m, 24h, 7d); default 7d.
// prometheus builds the report from that server's history of the whole
// fleet; the module checks the URL when the config loads.
func parseKustomStatus(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // directive name
	if d.NextArg() {
		return nil, d.Errf("kustom_status: unexpected argument %q: the only argument is a matcher such as /kustom/status or @name; options go in the block", d.Val())
	}
	s := new(module.StatusHandler)
	seen := map[string]bool{}
	for d.NextBlock(0) {
		sub := d.Val()
		if seen[sub] {
			return nil, d.Errf("kustom_status: %s already specified", sub)
		}
		seen[sub] = true
		switch sub {
		case "prometheus":
			if !d.AllArgs(&s.Prometheus) {
				return nil, d.Err("kustom_status: prometheus: wrong number of arguments, expected `prometheus <url>`")
			}
		case "prometheus_match":
			if !d.AllArgs(&s.PrometheusMatch) {
				return nil, d.Err("kustom_status: prometheus_match: wrong number of arguments, expected one list of label matchers in backquotes, such as `job=\"kustom-shim\"`")
			}
		case "window":
			var v string
			if !d.AllArgs(&v) {
				return nil, d.Err("kustom_status: window: wrong number of arguments, expected `window <duration>`")
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return nil, d.Errf("kustom_status: window: %q is not a duration such as 24h or 7d", v)
			}
			if dur <= 0 {
				return nil, d.Errf("kustom_status: window: %q must be positive", v)
			}
			s.Window = caddy.Duration(dur)
		default:
			return nil, d.Errf("unrecognized kustom_status option %q", sub)
		}
	}
	return s, nil
}
