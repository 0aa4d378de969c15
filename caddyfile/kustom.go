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
//
// It checks syntax only: argument counts, block structure, unknown or
// repeated options, and that sizes and numbers parse. What the values mean
// (which targets and policies exist, host names, URLs, transports, secrets,
// duplicates across map entries or credentials) is left to the module's
// Provision, which a JSON config and the admin API go through as well. One
// check in one place keeps the two from drifting apart, and the error a user
// sees at load is the module's, which names the field and never a secret.
// The parser refuses only what it cannot hand on: a value that does not
// parse, or one the JSON cannot carry (0 there means "the default").
func parseKustom(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // directive name
	if d.NextArg() {
		// httpcaddyfile has already taken a matcher token (/path, *, @name).
		return nil, d.Errf("kustom: unexpected argument %q: the only argument is a matcher such as /checkout/* or @name; options go in the block", d.Val())
	}
	k := new(module.Handler)
	seen := map[string]bool{}
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
		case "map":
			var from, to string
			if !d.AllArgs(&from, &to) {
				return nil, argErr(sub, "map <from-host> <to-host>")
			}
			if k.Map == nil {
				k.Map = map[string]string{}
			}
			// The same from-host written twice would be one key in the
			// JSON, the later line silently winning, so the module could
			// never see it. Two spellings of one host (case, trailing dot)
			// both reach the module, which refuses them.
			if _, dup := k.Map[from]; dup {
				return nil, d.Errf("map: %s is already mapped", from)
			}
			k.Map[from] = to
		case "unmatched":
			if err := once(sub); err != nil {
				return nil, err
			}
			// The action and its URL are checked together by the module:
			// which actions exist, and that only passthrough has a URL.
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return nil, d.Err("unmatched: wrong number of arguments, expected `unmatched reject` or `unmatched passthrough <url>`")
			}
			k.Unmatched = &module.UnmatchedPolicy{Action: args[0]}
			if len(args) == 2 {
				k.Unmatched.URL = args[1]
			}
		case "unknown_credentials":
			if err := once(sub); err != nil {
				return nil, err
			}
			if !d.AllArgs(&k.UnknownCredentials) {
				return nil, argErr(sub, "unknown_credentials reject|keep")
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
			// Read as reverse_proxy reads its transport: any registered
			// transport parses here, and the module, which refuses all but
			// http (and options such as tls_insecure_skip_verify), judges
			// it at load, as it judges a JSON config.
			protocol := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.transport."+protocol)
			if err != nil {
				return nil, err
			}
			if _, ok := unm.(http.RoundTripper); !ok {
				return nil, d.Errf("transport: %T is not a RoundTripper", unm)
			}
			k.TransportRaw = caddyconfig.JSONModuleObject(unm, "protocol", protocol, nil)
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
			// Two credentials of one name are both kept, in order: the
			// module refuses the second, as it does in a JSON list.
			c, err := parseCredential(d)
			if err != nil {
				return nil, err
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
			if err != nil {
				return c, d.Errf("credential %q: max_concurrent: %q is not a whole number", c.Name, raw)
			}
			if n == 0 {
				// 0 in the JSON means no limit, the opposite of what
				// was written. A negative number goes on to the module.
				return c, d.Errf("credential %q: max_concurrent: 0 would mean no limit; leave max_concurrent out for that", c.Name)
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
	return c, nil
}
