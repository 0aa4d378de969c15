package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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
	port := freePort(t)
	cfg := strings.ReplaceAll(string(example), ":8080", fmt.Sprintf(":%d", port))
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

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, "run", "--config", path)
	cmd.Env = []string{"HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	url := fmt.Sprintf("http://127.0.0.1:%d/payments/v1/sessions", port)
	var resp *http.Response
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if resp, err = http.Get(url); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("the example never answered: %v\n%s", err, logs.String())
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
	sock := filepath.Join(home, ".kustom-shim-admin.sock")
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("admin socket %s: %v %v", sock, fi, err)
	}
	st := exec.CommandContext(ctx, bin, "kustom-status")
	st.Env = cmd.Env
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

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// shimProcess is a kustom-shim started with `run`, stopped when the test ends.
type shimProcess struct {
	port, admin int
	logs        *strings.Builder
	stop        func() // graceful stop; also run when the test ends
}

func startProcess(t *testing.T, caddyfile string, port, admin int) *shimProcess {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	cmd := exec.Command(bin, "run", "--config", path)
	cmd.Env = []string{"HOME=" + home, "XDG_DATA_HOME=" + home, "XDG_CONFIG_HOME=" + home}
	p := &shimProcess{port: port, admin: admin, logs: new(strings.Builder)}
	var logMu sync.Mutex
	cmd.Stdout = lockedWriter{&logMu, p.logs}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			// SIGINT: a graceful stop, which writes the last-used state.
			_ = cmd.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
			}
		})
	}
	t.Cleanup(p.stop)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("kustom-shim did not start:\n%s", p.logs.String())
		}
	}
}

// lockedWriter serialises the process' stdout and stderr into one log.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *shimProcess) get(t *testing.T, host, path string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", p.port, path), nil)
	req.Host = host
	req.SetBasicAuth("K1_app", "their-own-password")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func fleetConfig(up *testupstream.Upstream, storage, instance string, port, admin int) string {
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
	kustom {
		unknown_credentials keep
		upstream https://%s
		transport http {
			tls_trust_pool file %s
		}
	}
}
`, admin, storage, instance, port, up.Addr, up.CAFile)
}

// TestKustomStatusFromRunningShim: the terminal table and exit status of a
// running shim: not enough evidence on a fresh start (2), complete once a
// short window has passed with only switched calls (0), action required after
// an app calls a Klarna host (1), and a shim that cannot be asked (3).
func TestKustomStatusFromRunningShim(t *testing.T) {
	up := testupstream.New(t)
	port, admin := freePort(t), freePort(t)
	p := startProcess(t, fleetConfig(up, t.TempDir(), "solo", port, admin), port, admin)
	status := func() (string, int) {
		return run(t, nil, "kustom-status", "--address", fmt.Sprintf("127.0.0.1:%d", admin), "--window", "2s")
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
	pa, aa := freePort(t), freePort(t)
	pb, ab := freePort(t), freePort(t)
	a := startProcess(t, fleetConfig(up, storage, "shim-a", pa, aa), pa, aa)
	startProcess(t, fleetConfig(up, storage, "shim-b", pb, ab), pb, ab)

	if got := a.get(t, "api-oc.klarna.com", "/settlements/v1/payouts"); got != 200 {
		t.Fatalf("status %d", got)
	}
	// B never saw that call; within a few flush intervals it reports it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := run(t, nil, "kustom-status", "--address", fmt.Sprintf("127.0.0.1:%d", ab))
		if strings.Contains(out, "api-oc.klarna.com") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shim B never showed shim A's traffic:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
