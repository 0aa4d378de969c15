package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kustomshim/kustomshim/internal/shimtest"
	"github.com/kustomshim/kustomshim/internal/testupstream"
)

// promServer is a real Prometheus (Debian's) on loopback, scraping the
// targets its file_sd file lists every second.
type promServer struct {
	url     string
	targets string // the file_sd file
	stop    func()
	out     *shimtest.Output
}

// listeningOn is Prometheus' log line for the address it bound.
var listeningOn = regexp.MustCompile(`msg="Listening on" address=(127\.0\.0\.1:[0-9]+)`)

func startPrometheus(t *testing.T) *promServer {
	t.Helper()
	binary := shimtest.Tool(t, "prometheus", "prometheus")
	dir := t.TempDir()
	p := &promServer{targets: filepath.Join(dir, "targets.json"), out: shimtest.NewOutput()}
	p.setTargets(t, nil)
	// The scrape targets come from a file that Prometheus watches: the
	// shims start after it (they need its URL) on ports of their own.
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: kustom-shim
    file_sd_configs:
      - files: [%q]
`, p.targets)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Port 0: Prometheus binds a port the kernel picks, and logs it.
	cmd := exec.Command(binary, "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stopped := false
	p.stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(p.stop)
	log, ok := p.out.Wait(60*time.Second, exited, listeningOn.MatchString)
	if !ok {
		t.Fatalf("prometheus did not say where it listens:\n%s", log)
	}
	p.url = "http://" + listeningOn.FindStringSubmatch(log)[1]
	shimtest.WaitFor(t, "prometheus to be ready", 60*time.Second, func() bool {
		resp, err := http.Get(p.url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

// setTargets replaces the scrape targets (host:port), in one rename, so
// that Prometheus never reads half a file.
func (p *promServer) setTargets(t *testing.T, targets []string) {
	t.Helper()
	b, _ := json.Marshal([]map[string][]string{{"targets": append([]string{}, targets...)}})
	tmp := p.targets + ".new"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p.targets); err != nil {
		t.Fatal(err)
	}
}

// query runs an instant query and returns each series' value by instance.
func (p *promServer) query(t *testing.T, q string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	out := map[string]float64{}
	for _, r := range doc.Data.Result {
		s, _ := r.Value[1].(string)
		v, _ := strconv.ParseFloat(s, 64)
		out[r.Metric["instance"]] = v
	}
	return out
}

// waitScraped waits until Prometheus holds a successful scrape of each
// target that began after since: the scrape's `up` sample, stored with the
// scraped ones, is 1 and stamped after since.
func (p *promServer) waitScraped(t *testing.T, targets []string, since time.Time) {
	t.Helper()
	shimtest.WaitFor(t, "prometheus to scrape "+strings.Join(targets, ", "), 30*time.Second, func() bool {
		at, up := p.query(t, `timestamp(up{job="kustom-shim"})`), p.query(t, `up{job="kustom-shim"}`)
		for _, tg := range targets {
			if up[tg] != 1 || at[tg] <= float64(since.UnixNano())/1e9 {
				return false
			}
		}
		return true
	})
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
	prom := startPrometheus(t)
	names := []string{"pod-a", "pod-b", "pod-c"}
	// start starts the pods, each a sidecar with storage of its own and a
	// status page that asks Prometheus (restarted, on the ports it had if
	// they are still free), and has Prometheus scrape them.
	start := func(before []*shimProcess) ([]*shimProcess, []string) {
		ps, targets := make([]*shimProcess, len(names)), make([]string, len(names))
		for i := range ps {
			var ports []int
			if before != nil {
				ports = before[i].Ports
			}
			ps[i] = startProcess(t, ports, fleetConfig(up, t.TempDir(), names[i], prom.url))
			targets[i] = fmt.Sprintf("127.0.0.1:%d", ps[i].port())
		}
		prom.setTargets(t, targets)
		return ps, targets
	}
	procs, _ := start(nil)
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
		st = getFleetStatus(t, procs[0].port(), "application/json")
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
		p.Stop()
	}
	procs, targets := start(procs)
	restarted := time.Now()
	// The pods themselves forgot: their own metrics show no row.
	for i, p := range procs {
		s := shimtest.ScrapeURL(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.port()))
		if n := s.Series("kustom_shim_last_used_timestamp_seconds"); n != 0 {
			t.Fatalf("pod %d kept %d rows after a restart with empty storage", i, n)
		}
	}
	// Once Prometheus has scraped the restarted pods, ask any of them.
	prom.waitScraped(t, targets, restarted)
	for i, p := range procs {
		st = getFleetStatus(t, p.port(), "application/json")
		if st.code != 200 || !st.hasRows(froms...) || st.doc.SwitchComplete || st.doc.Verdict == "complete" || st.doc.Evidence.Enough {
			t.Errorf("pod %d after the restart: %s", i, st.body)
		}
	}
	html := getFleetStatus(t, procs[1].port(), "text/html")
	if html.code != 200 || !strings.Contains(html.body, "Action required") || strings.Contains(html.body, "Switch complete") ||
		!strings.Contains(html.body, "api.klarna.com") {
		t.Errorf("HTML after the restart: %d\n%s", html.code, html.body)
	}

	// Prometheus gone: a clear 503, never a green.
	prom.stop()
	st = getFleetStatus(t, procs[2].port(), "application/json")
	if st.code != http.StatusServiceUnavailable || st.doc.Verdict != "unavailable" || st.doc.SwitchComplete ||
		!strings.Contains(st.doc.Error, prom.url) || len(st.doc.Services) != 0 {
		t.Errorf("with Prometheus stopped: %d %s", st.code, st.body)
	}
	html = getFleetStatus(t, procs[2].port(), "text/html")
	if html.code != http.StatusServiceUnavailable || !strings.Contains(html.body, "Cannot tell") || strings.Contains(html.body, "Switch complete") {
		t.Errorf("HTML with Prometheus stopped: %d\n%s", html.code, html.body)
	}
	if out, code := run(t, nil, "kustom-status", "--prometheus", prom.url); code != 3 || !strings.Contains(out, "Cannot tell") {
		t.Errorf("kustom-status with Prometheus stopped: exit %d\n%s", code, out)
	}
}
