package module

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "kustom-status",
		Usage: "[--prometheus <url> [--prometheus-match <matchers>]] [--address <admin-api-address>] [--config <path> [--adapter <name>]] [--window <duration>]",
		Short: "Tells whether the switch to Kustom is complete, with the evidence",
		Long: `
Prints the switch status (the same report as the kustom_status page): one
line per service, host called, store and key, with its state (switched,
bridged, klarna_host, failing, key_rejected, not_used), when it was last used,
and what to do; then the verdict in one line.

With --prometheus it builds the report from a Prometheus server that scrapes
every shim instance: the fleet's one answer, which survives pod restarts.
Otherwise it asks a running shim's admin API: --address, else the config's
admin address (--config), else the unix socket Caddyfile.example uses
(~/.kustom-shim-admin.sock) when it exists, else localhost:2019.

Exit status: 0 the switch is complete; 1 action is required or calls fail;
2 not enough evidence yet (observed for less than the window, or no call
seen); 3 the status could not be read (shim or Prometheus unreachable).
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().String("prometheus", "", "Build the fleet's report from this Prometheus server (http://host:9090)")
			cmd.Flags().String("prometheus-match", "", `With --prometheus: label matchers for this fleet's series, such as job="kustom-shim"`)
			cmd.Flags().String("address", "", "The address of the running shim's admin API")
			cmd.Flags().StringP("config", "c", "", "Configuration file, to find the admin address in")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().String("window", "", "How far back evidence counts, and how long it must have been gathered (default 7d)")
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

// Exit codes of kustom-status, for scripts and CI gates.
const (
	StatusExitComplete   = 0
	StatusExitAction     = 1
	StatusExitNotEnough  = 2
	StatusExitUnreadable = 3
)

// StatusExitCode is the exit status for a report.
func StatusExitCode(rep StatusReport) int {
	switch rep.Verdict {
	case VerdictComplete:
		return StatusExitComplete
	case VerdictActionRequired, VerdictFailing:
		return StatusExitAction
	case VerdictNotEnough:
		return StatusExitNotEnough
	}
	return StatusExitUnreadable
}

func cmdStatus(fl caddycmd.Flags) (int, error) {
	window := DefaultStatusWindow
	if win := fl.String("window"); win != "" {
		d, err := caddy.ParseDuration(win)
		if err != nil || d <= 0 {
			return StatusExitUnreadable, fmt.Errorf("--window: %q is not a positive duration such as 24h or 7d", win)
		}
		window = d
	}
	rep, err := fetchStatus(fl, window)
	if err != nil {
		return StatusExitUnreadable, err
	}
	printStatus(os.Stdout, rep)
	if rep.Verdict == VerdictUnavailable {
		return StatusExitUnreadable, errors.New(rep.Error)
	}
	code := StatusExitCode(rep)
	if code == StatusExitAction {
		// Caddy's command runner exits 1 only with an error to log.
		return code, fmt.Errorf("switch not complete: %s", rep.Verdict)
	}
	return code, nil
}

// adminSocketName is where Caddyfile.example puts the admin API: a unix
// socket in the user's home, which only that user can open.
const adminSocketName = ".kustom-shim-admin.sock"

// DefaultAdminSocket is the admin address kustom-status tries without
// --address or --config: Caddyfile.example's socket when it exists, else ""
// (Caddy's default, localhost:2019).
func DefaultAdminSocket() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	p := filepath.Join(home, adminSocketName)
	if fi, err := os.Stat(p); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return ""
	}
	return "unix/" + p
}

// fetchStatus gets the report from Prometheus or from the shim's admin API.
func fetchStatus(fl caddycmd.Flags, window time.Duration) (StatusReport, error) {
	if u := fl.String("prometheus"); u != "" {
		p, err := NewPrometheusSource(u)
		if err == nil {
			p, err = p.WithMatch(fl.String("prometheus-match"))
		}
		if err != nil {
			return StatusReport{}, fmt.Errorf("--%v", strings.Replace(err.Error(), "_", "-", 1))
		}
		return p.Report(context.Background(), time.Now(), window), nil
	}
	addr := fl.String("address")
	if addr == "" && fl.String("config") == "" {
		addr = DefaultAdminSocket()
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(addr, nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return StatusReport{}, err
	}
	uri := AdminStatusPath + "?window=" + url.QueryEscape(window.String())
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, uri, nil, nil)
	if err != nil {
		return StatusReport{}, fmt.Errorf("asking the shim at %s: %v", addr, err)
	}
	defer resp.Body.Close()
	var rep StatusReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return StatusReport{}, fmt.Errorf("reading the status from %s: %v", addr, err)
	}
	return rep, nil
}

// printStatus writes the status table for a terminal, then the verdict.
func printStatus(w io.Writer, rep StatusReport) {
	if rep.Verdict != VerdictUnavailable {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tHOST CALLED\tSENT TO\tSTORE\tKEY\tSTATE\tLAST USED\tAPPS\tACTION REQUIRED")
		for _, r := range rep.Services {
			last := "never"
			if !r.LastUsed.IsZero() {
				last = r.LastUsed.UTC().Format(time.RFC3339)
			}
			var apps []string
			for _, c := range r.Clients {
				apps = append(apps, c.UserAgent)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Service.DisplayName(), dash(r.FromHost), dash(r.ToHost),
				dash(r.Credential), dash(r.Key), r.State, last, dash(strings.Join(apps, ", ")), dash(r.ActionRequired))
		}
		tw.Flush()
		fmt.Fprintf(w, "\nEvidence: observing for %s of %s (source: %s).\n", rep.ObservedFor(), humanDuration(rep.Window), rep.Source)
	}
	fmt.Fprintln(w, rep.Summary())
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
