package main

import (
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

// promServer is a real Prometheus (Debian's) on loopback, scraping targets
// every second.
type promServer struct {
	url  string
	stop func()
	logs *strings.Builder
}

func startPrometheus(t *testing.T, targets []string) *promServer {
	t.Helper()
	binary := shimtest.Tool(t, "prometheus", "prometheus")
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = fmt.Sprintf("%q", tg)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: kustom-shim
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	p := &promServer{url: fmt.Sprintf("http://127.0.0.1:%d", port), logs: new(strings.Builder)}
	cmd := exec.Command(binary, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	p.stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(p.stop)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus did not become ready:\n%s", p.logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fleetMember is one sidecar of the fleet: its own storage, a metrics
// endpoint Prometheus scrapes, and a status page built from Prometheus.
func fleetMember(up *testupstream.Upstream, storage, instance, promURL string, port, admin int) string {
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
	metrics /metrics
	kustom_status /kustom/status {
		prometheus %s
		window 10m
	}
	kustom {
		unknown_credentials keep
		upstream https://%s
		transport http {
			tls_trust_pool file %s
		}
	}
}
`, admin, storage, instance, port, promURL, up.Addr, up.CAFile)
}

type fleetStatus struct {
	code int
	doc  struct {
		Verdict        string `json:"verdict"`
		SwitchComplete bool   `json:"switch_complete"`
		Source         string `json:"source"`
		Error          string `json:"error"`
		Summary        string `json:"summary"`
		Evidence       struct {
			Enough bool `json:"enough"`
		} `json:"evidence"`
		Services []struct {
			Service  string `json:"service"`
			FromHost string `json:"from_host"`
			Key      string `json:"key"`
			State    string `json:"state"`
		} `json:"services"`
	}
	body string
}

func getFleetStatus(t *testing.T, port int, accept string) fleetStatus {
	t.Helper()
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/kustom/status", port), nil)
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	st := fleetStatus{code: resp.StatusCode, body: string(b)}
	if accept == "application/json" {
		if err := json.Unmarshal(b, &st.doc); err != nil {
			t.Fatalf("status JSON: %v\n%s", err, b)
		}
	}
	return st
}

// hasRows tells whether the report holds a used row from each host.
func (s fleetStatus) hasRows(froms ...string) bool {
	for _, f := range froms {
		found := false
		for _, r := range s.doc.Services {
			found = found || (r.FromHost == f && r.State != "not_used")
		}
		if !found {
			return false
		}
	}
	return true
}

// TestFleetStatusFromPrometheus: a real Prometheus scrapes three real
// kustom-shim processes; one status page shows all three's rows; after all
// three restart with empty storage the page still shows them and is not
// green; with Prometheus stopped the page says so with 503.
func TestFleetStatusFromPrometheus(t *testing.T) {
	up := testupstream.New(t)
	ports := []int{freePort(t), freePort(t), freePort(t)}
	admins := []int{freePort(t), freePort(t), freePort(t)}
	targets := make([]string, 3)
	for i, p := range ports {
		targets[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	prom := startPrometheus(t, targets)
	names := []string{"pod-a", "pod-b", "pod-c"}
	start := func() []*shimProcess {
		ps := make([]*shimProcess, 3)
		for i := range ps {
			ps[i] = startProcess(t, fleetMember(up, t.TempDir(), names[i], prom.url, ports[i], admins[i]), ports[i], admins[i])
		}
		return ps
	}
	procs := start()
	// Each pod sees different traffic: a Klarna host, the sidecar itself,
	// and an app that already calls Kustom.
	for i, host := range []string{"api.klarna.com", "localhost", "api.kustom.co"} {
		if got := procs[i].get(t, host, "/checkout/v3/orders/o1"); got != 200 {
			t.Fatalf("pod %d: status %d", i, got)
		}
	}
	froms := []string{"api.klarna.com", "local", "api.kustom.co"}
	var st fleetStatus
	shimtest.WaitFor(t, "one page to show all three pods' rows", 30*time.Second, func() bool {
		st = getFleetStatus(t, ports[0], "application/json")
		return st.code == 200 && st.hasRows(froms...)
	})
	if st.doc.Source != "prometheus" || st.doc.SwitchComplete || st.doc.Verdict != "action_required" {
		t.Errorf("fleet report: %s", st.body)
	}
	out, code := run(t, nil, "kustom-status", "--prometheus", prom.url, "--window", "10m")
	if code != 1 || !strings.Contains(out, "api.klarna.com") || !strings.Contains(out, "local") || !strings.Contains(out, "source: prometheus") {
		t.Errorf("kustom-status --prometheus: exit %d\n%s", code, out)
	}

	// Every pod restarts with empty storage (a redeploy of emptyDir pods).
	for _, p := range procs {
		p.stop()
	}
	procs = start()
	// The pods themselves forgot: their own metrics show no row.
	for i, p := range procs {
		s := shimtest.ScrapeURL(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.port))
		if n := s.Series("kustom_shim_last_used_timestamp_seconds"); n != 0 {
			t.Fatalf("pod %d kept %d rows after a restart with empty storage", i, n)
		}
	}
	// Let Prometheus scrape the restarted pods, then ask any of them.
	time.Sleep(2500 * time.Millisecond)
	for i := range procs {
		st = getFleetStatus(t, ports[i], "application/json")
		if st.code != 200 || !st.hasRows(froms...) || st.doc.SwitchComplete || st.doc.Verdict == "complete" || st.doc.Evidence.Enough {
			t.Errorf("pod %d after the restart: %s", i, st.body)
		}
	}
	html := getFleetStatus(t, ports[1], "text/html")
	if html.code != 200 || !strings.Contains(html.body, "Action required") || strings.Contains(html.body, "Switch complete") ||
		!strings.Contains(html.body, "api.klarna.com") {
		t.Errorf("HTML after the restart: %d\n%s", html.code, html.body)
	}

	// Prometheus gone: a clear 503, never a green.
	prom.stop()
	st = getFleetStatus(t, ports[2], "application/json")
	if st.code != http.StatusServiceUnavailable || st.doc.Verdict != "unavailable" || st.doc.SwitchComplete ||
		!strings.Contains(st.doc.Error, prom.url) || len(st.doc.Services) != 0 {
		t.Errorf("with Prometheus stopped: %d %s", st.code, st.body)
	}
	html = getFleetStatus(t, ports[2], "text/html")
	if html.code != http.StatusServiceUnavailable || !strings.Contains(html.body, "Cannot tell") || strings.Contains(html.body, "Switch complete") {
		t.Errorf("HTML with Prometheus stopped: %d\n%s", html.code, html.body)
	}
	if out, code := run(t, nil, "kustom-status", "--prometheus", prom.url); code != 3 || !strings.Contains(out, "Cannot tell") {
		t.Errorf("kustom-status with Prometheus stopped: exit %d\n%s", code, out)
	}
}
