package caddyfile

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/kustomshim/kustomshim/module"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("kustom", parseApp)
}

// parseApp sets up the `kustom` app from the global option of that name. The
// app works without it; the option only tunes how last-used state is kept:
//
//	{
//	    kustom {
//	        flush_interval <duration>
//	        instance_id <name>
//	    }
//	}
func parseApp(d *caddyfile.Dispenser, _ any) (any, error) {
	d.Next() // option name
	if d.NextArg() {
		return nil, d.Err("kustom: the global option takes no arguments, only a block")
	}
	app := new(module.App)
	for d.NextBlock(0) {
		switch d.Val() {
		case "flush_interval":
			if app.FlushInterval != 0 {
				return nil, d.Err("kustom: flush_interval already specified")
			}
			var v string
			if !d.AllArgs(&v) {
				return nil, d.Err("kustom: flush_interval: expected one duration, such as 5s")
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				// 0 would mean "the default" in JSON: a syntax matter here.
				return nil, d.Errf("kustom: flush_interval: %q is not a positive duration", v)
			}
			app.FlushInterval = caddy.Duration(dur)
		case "instance_id":
			if app.InstanceID != "" {
				return nil, d.Err("kustom: instance_id already specified")
			}
			if !d.AllArgs(&app.InstanceID) {
				return nil, d.Err("kustom: instance_id: expected one name")
			}
		default:
			return nil, d.Errf("kustom: unrecognized global option %q", d.Val())
		}
	}
	return httpcaddyfile.App{Name: "kustom", Value: caddyconfig.JSON(app, nil)}, nil
}
