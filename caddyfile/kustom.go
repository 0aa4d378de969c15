// Package caddyfile registers kustom-shim's Caddyfile directives. Importing
// it (as cmd/kustom-shim does, or xcaddy with --with) also registers the
// modules themselves.
package caddyfile

import (
	"net/http"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/kustomshim/kustomshim/module"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("kustom", parseKustom)
	// Right before reverse_proxy, after metrics and respond: a site needs no
	// `order` or `route`, and a `metrics /metrics` or a `respond` with a
	// matcher in the same site still answers first.
	httpcaddyfile.RegisterDirectiveOrder("kustom", httpcaddyfile.Before, "reverse_proxy")
}

// parseKustom sets up the kustom handler from Caddyfile tokens:
//
//	kustom [<matcher>] {
//	    default_target production|playground|none
//	    map <from-host> <to-host>
//	    unmatched reject | passthrough <url>
//	    unknown_credentials reject|keep
//	    upstream <url>
//	    transport http {
//	        <Caddy's reverse_proxy http transport options>
//	    }
//	    credential <name> {
//	        klarna_username <username>
//	        klarna_password {env.NAME} | klarna_password_hash <bcrypt or argon2id hash>
//	        kustom_username <username>
//	        kustom_password {env.NAME} | kustom_api_key {env.NAME}
//	    }
//	}
func parseKustom(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // directive name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	k := new(module.Handler)
	seen := map[string]bool{}
	once := func(name string) error {
		if seen[name] {
			return d.Errf("%s already specified", name)
		}
		seen[name] = true
		return nil
	}
	for d.NextBlock(0) {
		sub := d.Val()
		switch sub {
		case "default_target":
			if err := once(sub); err != nil {
				return nil, err
			}
			if !d.AllArgs(&k.DefaultTarget) {
				return nil, d.ArgErr()
			}
			switch k.DefaultTarget {
			case module.TargetProduction, module.TargetPlayground, module.TargetNone:
			default:
				return nil, d.Errf("default_target: %q is not one of production, playground, none", k.DefaultTarget)
			}
		case "map":
			var from, to string
			if !d.AllArgs(&from, &to) {
				return nil, d.ArgErr()
			}
			if k.Map == nil {
				k.Map = map[string]string{}
			}
			if _, dup := k.Map[from]; dup {
				return nil, d.Errf("map: %s is already mapped", from)
			}
			k.Map[from] = to
		case "unmatched":
			if err := once(sub); err != nil {
				return nil, err
			}
			args := d.RemainingArgs()
			switch {
			case len(args) == 1 && args[0] == "reject":
				k.Unmatched = &module.UnmatchedPolicy{Action: "reject"}
			case len(args) == 2 && args[0] == "passthrough":
				k.Unmatched = &module.UnmatchedPolicy{Action: "passthrough", URL: args[1]}
			default:
				return nil, d.Err("unmatched: expected `reject` or `passthrough <url>`")
			}
		case "unknown_credentials":
			if err := once(sub); err != nil {
				return nil, err
			}
			if !d.AllArgs(&k.UnknownCredentials) {
				return nil, d.ArgErr()
			}
			if k.UnknownCredentials != module.UnknownReject && k.UnknownCredentials != module.UnknownKeep {
				return nil, d.Errf("unknown_credentials: %q is not one of reject, keep", k.UnknownCredentials)
			}
		case "upstream":
			if err := once(sub); err != nil {
				return nil, err
			}
			if !d.AllArgs(&k.Upstream) {
				return nil, d.ArgErr()
			}
		case "transport":
			if err := once(sub); err != nil {
				return nil, err
			}
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			if d.Val() != "http" {
				return nil, d.Errf("transport: only the http transport can reach the Kustom API, not %q", d.Val())
			}
			unm, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.transport.http")
			if err != nil {
				return nil, err
			}
			if _, ok := unm.(http.RoundTripper); !ok {
				return nil, d.Errf("transport: %T is not a RoundTripper", unm)
			}
			k.TransportRaw = caddyconfig.JSONModuleObject(unm, "protocol", "http", nil)
		case "credential":
			c, err := parseCredential(d)
			if err != nil {
				return nil, err
			}
			for _, other := range k.Credentials {
				if other.Name == c.Name {
					return nil, d.Errf("credential %q already specified", c.Name)
				}
			}
			k.Credentials = append(k.Credentials, c)
		default:
			return nil, d.Errf("unrecognized kustom option %q", sub)
		}
	}
	return k, nil
}

func parseCredential(d *caddyfile.Dispenser) (module.Credential, error) {
	var c module.Credential
	if !d.AllArgs(&c.Name) {
		return c, d.Err("credential: expected a name, as in `credential shop1 { … }`")
	}
	fields := map[string]*string{
		"klarna_username":      &c.KlarnaUsername,
		"klarna_password":      &c.KlarnaPassword,
		"klarna_password_hash": &c.KlarnaPasswordHash,
		"kustom_username":      &c.KustomUsername,
		"kustom_password":      &c.KustomPassword,
		"kustom_api_key":       &c.KustomAPIKey,
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		dst, ok := fields[name]
		if !ok {
			return c, d.Errf("credential %q: unrecognized option %q", c.Name, name)
		}
		if *dst != "" {
			return c, d.Errf("credential %q: %s already specified", c.Name, name)
		}
		if !d.AllArgs(dst) {
			// Never echo the arguments: they may be a secret.
			return c, d.Errf("credential %q: %s takes exactly one value", c.Name, name)
		}
	}
	if c.KlarnaUsername == "" {
		return c, d.Errf("credential %q: klarna_username is required", c.Name)
	}
	return c, nil
}
