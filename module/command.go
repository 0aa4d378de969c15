package module

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "kustom-status",
		Usage: "[--address <admin-api-address>] [--config <path> [--adapter <name>]] [--window <duration>]",
		Short: "Shows which services still call Klarna hosts, from a running shim",
		Long: `
Asks a running kustom-shim's admin API for its switch status (the same data
as the kustom_status page) and prints one line per service and host: the
host the app called, where the shim sent it, when it was last used, and what
to do. The admin address is found as for 'caddy reload': --address, else the
config's admin address (--config), else localhost:2019.

Exits 0 whether or not action is required; the last line says which.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().String("address", "", "The address of the running shim's admin API")
			cmd.Flags().StringP("config", "c", "", "Configuration file, to find the admin address in")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().String("window", "", "How recent a Klarna call must be to require action (default 7d)")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdStatus)
		},
	})
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

func cmdStatus(fl caddycmd.Flags) (int, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	uri := AdminStatusPath
	if win := fl.String("window"); win != "" {
		if _, err := caddy.ParseDuration(win); err != nil {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("--window: %v", err)
		}
		uri += "?window=" + url.QueryEscape(win)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, uri, nil, nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("asking the shim at %s: %v", addr, err)
	}
	defer resp.Body.Close()
	var rep StatusReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("reading the status from %s: %v", addr, err)
	}
	printStatus(os.Stdout, rep)
	return caddy.ExitCodeSuccess, nil
}

// printStatus writes the status table for a terminal.
func printStatus(w io.Writer, rep StatusReport) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tHOST CALLED\tSENT TO\tLAST USED\tACTION REQUIRED")
	for _, r := range rep.Services {
		last := "never"
		if !r.LastUsed.IsZero() {
			last = r.LastUsed.UTC().Format(time.RFC3339)
		}
		action := r.ActionRequired
		if action == "" {
			action = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Service.DisplayName(), dash(r.FromHost), dash(r.ToHost), last, action)
	}
	tw.Flush()
	switch {
	case !rep.SwitchComplete:
		fmt.Fprintf(w, "\nAction required: some services were called on a Klarna host in the last %s.\n", humanDuration(rep.Window))
	case rep.ShimInUse:
		fmt.Fprintln(w, "\nAll services use Kustom endpoints; traffic still flows through the shim.")
	default:
		fmt.Fprintln(w, "\nAll services use Kustom endpoints, and nothing went through the shim in the window: it can be removed.")
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
