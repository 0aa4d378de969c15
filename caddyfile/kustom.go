// Package caddyfile registers kustom-shim's Caddyfile directives. Importing
// it (as cmd/kustom-shim does, or xcaddy with --with) also registers the
// modules themselves.
package caddyfile

import (
	"math"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

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
//	    max_request_body <size>
//	    max_request_headers <size>
//	    upstream <url>
//	    intercept_connect
//	    proxy_auth <username> <bcrypt or argon2id hash>
//	    transport http {
//	        <Caddy's reverse_proxy http transport options>
//	    }
//	    credential <name> {
//	        klarna_username <username>
//	        klarna_password {env.NAME} | klarna_password_hash <bcrypt or argon2id hash>
//	        kustom_username <username>
//	        kustom_password {env.NAME} | kustom_api_key {env.NAME}
//	        max_concurrent <n>
//	    }
//	}
func parseKustom(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // directive name
	if d.NextArg() {
		// httpcaddyfile has already taken a matcher token (/path, *, @name).
		return nil, d.Errf("kustom: unexpected argument %q: the only argument is a matcher such as /checkout/* or @name; options go in the block", d.Val())
	}
	k := new(module.Handler)
	seen := map[string]bool{}
	mapped := map[string]string{} // normalised from-host → as written
	// argErr names the subdirective: Dispenser.ArgErr names only the last
	// token read, which may be a value rather than the option at fault.
	argErr := func(name, usage string) error {
		return d.Errf("%s: wrong number of arguments, expected `%s`", name, usage)
	}
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
				return nil, argErr(sub, "default_target production|playground|none")
			}
			switch k.DefaultTarget {
			case module.TargetProduction, module.TargetPlayground, module.TargetNone:
			default:
				return nil, d.Errf("default_target: %q is not one of production, playground, none", k.DefaultTarget)
			}
		case "map":
			var from, to string
			if !d.AllArgs(&from, &to) {
				return nil, argErr(sub, "map <from-host> <to-host>")
			}
			if k.Map == nil {
				k.Map = map[string]string{}
			}
			// The module compares host names normalised (case, trailing
			// dot); two spellings of one host would collapse there, and
			// which to-host won would depend on map order.
			norm := module.NormalizeHost(from)
			if prev, dup := mapped[norm]; dup {
				if prev == from {
					return nil, d.Errf("map: %s is already mapped", from)
				}
				return nil, d.Errf("map: %s is already mapped (as %s)", from, prev)
			}
			mapped[norm] = from
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
				return nil, argErr(sub, "unknown_credentials reject|keep")
			}
			if k.UnknownCredentials != module.UnknownReject && k.UnknownCredentials != module.UnknownKeep {
				return nil, d.Errf("unknown_credentials: %q is not one of reject, keep", k.UnknownCredentials)
			}
		case "max_request_body", "max_request_headers":
			if err := once(sub); err != nil {
				return nil, err
			}
			var raw string
			if !d.AllArgs(&raw) {
				return nil, argErr(sub, sub+" <size>")
			}
			// Sizes read as Caddy's own request_body max_size reads them.
			size, err := humanize.ParseBytes(raw)
			if err != nil {
				return nil, d.Errf("%s: %q is not a size such as 1MiB or 512KB", sub, raw)
			}
			if size == 0 || size > math.MaxInt64 {
				// 0 in the JSON means the default, not "no body".
				return nil, d.Errf("%s: %q is out of range", sub, raw)
			}
			if sub == "max_request_body" {
				k.MaxRequestBody = int64(size)
			} else {
				k.MaxRequestHeaders = int64(size)
			}
		case "upstream":
			if err := once(sub); err != nil {
				return nil, err
			}
			if !d.AllArgs(&k.Upstream) {
				return nil, argErr(sub, "upstream <url>")
			}
		case "transport":
			if err := once(sub); err != nil {
				return nil, err
			}
			if !d.NextArg() {
				return nil, argErr(sub, "transport http { … }")
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
		case "intercept_connect":
			if err := once(sub); err != nil {
				return nil, err
			}
			if d.NextArg() {
				return nil, argErr(sub, "intercept_connect")
			}
			k.InterceptConnect = true
		case "proxy_auth":
			if err := once(sub); err != nil {
				return nil, err
			}
			pa := new(module.ProxyAuth)
			if !d.AllArgs(&pa.Username, &pa.PasswordHash) {
				// Never echo the arguments.
				return nil, argErr(sub, "proxy_auth <username> <password-hash>")
			}
			k.ProxyAuth = pa
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
		if name == "max_concurrent" {
			var raw string
			if c.MaxConcurrent != 0 {
				return c, d.Errf("credential %q: max_concurrent already specified", c.Name)
			}
			if !d.AllArgs(&raw) {
				return c, d.Errf("credential %q: max_concurrent takes exactly one number", c.Name)
			}
			n, err := strconv.Atoi(raw)
			if err != nil || n <= 0 {
				return c, d.Errf("credential %q: max_concurrent: %q is not a positive whole number", c.Name, raw)
			}
			c.MaxConcurrent = n
			continue
		}
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
