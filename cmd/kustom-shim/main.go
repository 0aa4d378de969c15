// Command kustom-shim is Caddy with its standard modules plus kustom-shim's
// handler and Caddyfile directives: every stock subcommand (run, adapt,
// validate, list-modules, reload, hash-password, …) works as in Caddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/kustomshim/kustomshim/caddyfile"
)

func main() { caddycmd.Main() }
