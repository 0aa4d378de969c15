package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// bin is the kustom-shim binary built once for these tests, as a user builds it.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kustom-shim-bin")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "kustom-shim")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building kustom-shim: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run executes the binary with a private HOME/XDG dirs so that nothing is
// read from or written to the real user's Caddy data.
func run(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	home := t.TempDir()
	cmd.Env = append([]string{"HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home, "PATH=" + os.Getenv("PATH")}, env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %v: %v", args, err)
	}
	return string(out), code
}

func TestListModules(t *testing.T) {
	out, code := run(t, nil, "list-modules")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, m := range []string{"http.handlers.kustom", "kustom", "http.handlers.reverse_proxy", "http.handlers.file_server"} {
		if !strings.Contains(out+"\n", "\n"+m+"\n") {
			t.Errorf("list-modules lacks %s", m)
		}
	}
}

// TestExampleStartsWithoutSecrets runs Caddyfile.example as the README says,
// on free ports, with no secret in the environment, and sends it a request.
func TestExampleStartsWithoutSecrets(t *testing.T) {
	example, err := os.ReadFile("../../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	config := func(ports []int) string {
		return strings.ReplaceAll(string(example), ":8080", fmt.Sprintf(":%d", ports[0]))
	}
	first := shimtest.Port(t)
	cfg := config([]int{first})
	if cfg == string(example) {
		t.Fatal("the example no longer listens on :8080; update this test")
	}
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, nil, "validate", "--config", path); code != 0 {
		t.Fatalf("validate: exit %d\n%s", code, out)
	}

	p := shimtest.StartProcess(t, bin, nil, []int{first}, config)
	port := p.Ports[0]
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/payments/v1/sessions", port))
	if err != nil {
		t.Fatalf("the example does not answer: %v\n%s", err, p.Out.String())
	}
	resp.Body.Close()
	// With no credential configured, a Klarna Payments path is still refused
	// by the shim itself, which shows the kustom handler is serving.
	if resp.StatusCode != 403 || resp.Header.Get("Kustom-Shim-Error") != "unmatched_path" {
		t.Fatalf("status %d, reason %q", resp.StatusCode, resp.Header.Get("Kustom-Shim-Error"))
	}

	// The status page and the metrics the example serves.
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/kustom-shim/status", port), nil)
	req.Header.Set("Accept", "application/json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var status struct {
		Verdict        string            `json:"verdict"`
		SwitchComplete bool              `json:"switch_complete"`
		Services       []json.RawMessage `json:"services"`
	}
	err = json.NewDecoder(resp.Body).Decode(&status)
	resp.Body.Close()
	// A shim that has just started has seen nothing: never "complete".
	if err != nil || len(status.Services) != 5 || status.SwitchComplete || status.Verdict != "not_enough_evidence" {
		t.Errorf("status page: %v, %d services, complete %v, verdict %q", err, len(status.Services), status.SwitchComplete, status.Verdict)
	}
	// The admin API is a unix socket only this user can open, and
	// kustom-status finds it without flags.
	sock := filepath.Join(p.Home, ".kustom-shim-admin.sock")
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("admin socket %s: %v %v", sock, fi, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st := exec.CommandContext(ctx, bin, "kustom-status")
	st.Env = p.Cmd.Env
	out, err := st.CombinedOutput()
	if code := st.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), "Not enough evidence yet") {
		t.Errorf("kustom-status without flags: exit %d %v\n%s", code, err, out)
	}
	resp, err = http.Get(fmt.Sprintf("http://127.0.0.1:%d/kustom-shim/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `kustom_shim_refused_total{reason="unmatched_path"} 1`) {
		t.Errorf("metrics lack the refusal:\n%.2000s", metrics)
	}
}

// TestKustomVerify: one key the test upstream accepts, one it rejects.
func TestKustomVerify(t *testing.T) {
	up := testupstream.New(t)
	up.Handle(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Basic kco_test_api_good-key-111" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
	})
	path := filepath.Join(t.TempDir(), "Caddyfile")
	cfg := fmt.Sprintf(`:0 {
	kustom {
		upstream https://%s
		transport http {
			tls_trust_pool file %s
		}
		credential good {
			klarna_username K1_good
			klarna_password {env.KP}
			kustom_api_key {env.GOOD_KEY}
		}
		credential stale {
			klarna_username K2_stale
			klarna_password {env.KP}
			kustom_api_key {env.STALE_KEY}
		}
	}
}
`, up.Addr, up.CAFile)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := run(t, []string{"KP=klarna-pw-999", "GOOD_KEY=kco_test_api_good-key-111", "STALE_KEY=kco_test_api_stale-key-222"},
		"kustom-verify", "--config", path)
	if code != 1 {
		t.Errorf("exit %d, want 1 (one credential fails)\n%s", code, out)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines[f[0]] = l
		}
	}
	if l := lines["good"]; !strings.Contains(l, "api.playground.kustom.co") || !strings.Contains(l, "accepted (404)") {
		t.Errorf("good credential line %q", l)
	}
	if l := lines["stale"]; !strings.Contains(l, "rejected (401)") || !strings.Contains(l, "Kustom Portal") {
		t.Errorf("stale credential line %q", l)
	}
	for _, secret := range []string{"klarna-pw-999", "good-key-111", "stale-key-222"} {
		if strings.Contains(out, secret) {
			t.Errorf("output contains a secret: %s", secret)
		}
	}
	reqs := up.Requests()
	if len(reqs) != 2 {
		t.Fatalf("upstream got %d requests, want 2", len(reqs))
	}
	for _, r := range reqs {
		if r.Method != "GET" || !strings.HasPrefix(r.Path, "/ordermanagement/v1/orders/") ||
			r.Host != "api.playground.kustom.co" || r.ServerName != "api.playground.kustom.co" {
			t.Errorf("verify call %s %s Host %q SNI %q", r.Method, r.Path, r.Host, r.ServerName)
		}
	}
}

// shimProcess is a kustom-shim started with `run` on a site port and an
// admin port (Ports[0] and [1]), stopped when the test ends.
type shimProcess struct{ *shimtest.Process }

func (p *shimProcess) port() int  { return p.Ports[0] }
func (p *shimProcess) admin() int { return p.Ports[1] }

// startProcess starts config on the ports given (nil or 0: new ones; see
// shimtest.Port), or on new ones if something took them.
func startProcess(t *testing.T, ports []int, config func(port, admin int) string) *shimProcess {
	t.Helper()
	if ports == nil {
		ports = make([]int, 2)
	}
	return &shimProcess{shimtest.StartProcess(t, bin, nil, ports, func(p []int) string { return config(p[0], p[1]) })}
}

func (p *shimProcess) get(t *testing.T, host, path string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", p.port(), path), nil)
	req.Host = host
	req.SetBasicAuth("K1_app", "their-own-password")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// fleetConfig is one shim of a fleet sharing storage, keeping callers' own
// credentials; with prom, it also has /metrics, which that Prometheus
// scrapes, and a status page built from that Prometheus.
func fleetConfig(up *testupstream.Upstream, storage, instance, prom string) func(port, admin int) string {
	status := ""
	if prom != "" {
		status = fmt.Sprintf("\tmetrics /metrics\n\tkustom_status /kustom/status {\n\t\tprometheus %s\n\t\twindow 10m\n\t}\n", prom)
	}
	return func(port, admin int) string {
		return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	storage file_system %s
	kustom {
		flush_interval 1s
		instance_id %s
	}
}

:%d {
	bind 127.0.0.1
%s	kustom {
		unknown_credentials keep
		upstream https://%s
		transport http {
			tls_trust_pool file %s
		}
	}
}
`, admin, storage, instance, port, status, up.Addr, up.CAFile)
	}
}

// TestKustomStatusFromRunningShim: the terminal table and exit status of a
// running shim: not enough evidence on a fresh start (2), complete once a
// short window has passed with only switched calls (0), action required after
// an app calls a Klarna host (1), and a shim that cannot be asked (3).
func TestKustomStatusFromRunningShim(t *testing.T) {
	up := testupstream.New(t)
	p := startProcess(t, nil, fleetConfig(up, t.TempDir(), "solo", ""))
	status := func() (string, int) {
		return run(t, nil, "kustom-status", "--address", fmt.Sprintf("127.0.0.1:%d", p.admin()), "--window", "2s")
	}

	out, code := status()
	if code != 2 || !strings.Contains(out, "Not enough evidence yet: no call has been seen") {
		t.Fatalf("before traffic: exit %d\n%s", code, out)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		if got := p.get(t, "api.kustom.co", "/checkout/v3/orders/o1"); got != 200 {
			t.Fatalf("status %d", got)
		}
		if out, code = status(); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never complete: exit %d\n%s", code, out)
		}
	}
	if !strings.Contains(out, "Switch complete") || !strings.Contains(out, "switched") {
		t.Errorf("complete output:\n%s", out)
	}

	if got := p.get(t, "api.klarna.com", "/checkout/v3/orders/o1"); got != 200 {
		t.Fatalf("status %d", got)
	}
	out, code = status()
	if code != 1 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "Checkout ") && strings.Contains(l, "api.klarna.com") {
			row = l
		}
	}
	for _, want := range []string{"api.klarna.com", "api.kustom.co", "kept", "klarna_host", "Go-http-client/1.1",
		time.Now().UTC().Format("2006-01-02"), "Switch the app calling api.klarna.com"} {
		if !strings.Contains(row, want) {
			t.Errorf("checkout row %q lacks %q", row, want)
		}
	}
	if !strings.Contains(out, "Action required: apps sending their own key still depends on the shim") {
		t.Errorf("no action summary:\n%s", out)
	}
	if strings.Contains(out, "their-own-password") {
		t.Error("the status prints a caller's password")
	}
	if out, code = run(t, nil, "kustom-status", "--address", "127.0.0.1:1"); code != 3 {
		t.Errorf("unreachable shim: exit %d\n%s", code, out)
	}
}

// TestFleetSharesLastUsed: two shim processes sharing one storage directory
// (as a fleet shares Redis or Consul through a Caddy storage module): one
// reports the other's traffic.
func TestFleetSharesLastUsed(t *testing.T) {
	up := testupstream.New(t)
	storage := t.TempDir()
	a := startProcess(t, nil, fleetConfig(up, storage, "shim-a", ""))
	b := startProcess(t, nil, fleetConfig(up, storage, "shim-b", ""))

	if got := a.get(t, "api-oc.klarna.com", "/settlements/v1/payouts"); got != 200 {
		t.Fatalf("status %d", got)
	}
	// B never saw that call; within a few flush intervals it reports it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := run(t, nil, "kustom-status", "--address", fmt.Sprintf("127.0.0.1:%d", b.admin()))
		if strings.Contains(out, "api-oc.klarna.com") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shim B never showed shim A's traffic:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
