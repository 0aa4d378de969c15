package module

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "kustom-verify",
		Usage: "--config <path> [--adapter <name>]",
		Short: "Checks every configured credential against its Kustom host",
		Long: `
Reads the config, and for every credential of every kustom handler makes one
harmless authenticated call to its Kustom host: a read of an order id that
cannot exist. 404 means Kustom accepts the key; 401 or 403 means it does not.
The call is dialled the way the shim would dial it (upstream, transport).

Prints one line per credential: name, host, result, and what to do on
failure. Exits 1 when any credential fails. Never prints a secret; secrets are
read from the environment and files exactly as the shim reads them.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file (required)")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdVerify)
		},
	})
}

func cmdVerify(fl caddycmd.Flags) (int, error) {
	cfgFile := fl.String("config")
	if cfgFile == "" {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--config is required")
	}
	cfg, _, _, err := caddycmd.LoadConfig(cfgFile, fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	handlers, err := kustomHandlers(cfg)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	var results []VerifyResult
	for _, h := range handlers {
		rs, err := VerifyCredentials(ctx, h)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		results = append(results, rs...)
	}
	if len(results) == 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("no credential is configured in %s: nothing to verify", cfgFile)
	}
	failed := printVerify(os.Stdout, results)
	if failed > 0 {
		return 1, fmt.Errorf("%d of %d credentials failed", failed, len(results))
	}
	return caddy.ExitCodeSuccess, nil
}

// printVerify writes the result table and returns the number of failures.
func printVerify(w io.Writer, results []VerifyResult) int {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CREDENTIAL\tHOST\tRESULT\tACTION")
	failed := 0
	for _, r := range results {
		if !r.OK {
			failed++
		}
		action := r.Action
		if action == "" {
			action = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Credential, r.Host, r.Result, action)
	}
	tw.Flush()
	return failed
}

// kustomHandlers finds every kustom handler in a JSON config, wherever routes
// nest it (subroutes, handle blocks).
func kustomHandlers(cfg []byte) ([]*Handler, error) {
	var root any
	if err := json.Unmarshal(cfg, &root); err != nil {
		return nil, err
	}
	var found []*Handler
	var walk func(v any) error
	walk = func(v any) error {
		switch t := v.(type) {
		case map[string]any:
			if t["handler"] == "kustom" {
				b, _ := json.Marshal(t)
				h := new(Handler)
				if err := json.Unmarshal(b, h); err != nil {
					return fmt.Errorf("kustom handler: %v", err)
				}
				found = append(found, h)
			}
			for _, c := range t {
				if err := walk(c); err != nil {
					return err
				}
			}
		case []any:
			for _, c := range t {
				if err := walk(c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return found, walk(root)
}
