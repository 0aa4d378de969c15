// Package deploy holds kustom-shim's monitoring files: Prometheus rules, their
// promtool unit tests and a Grafana dashboard. These tests validate them. It
// also holds the deployment examples (Kubernetes sidecar, systemd unit,
// Dockerfile), tested in examples_test.go.
//
// The promtool tests need promtool on PATH (Debian package "prometheus"). They
// are skipped without it, unless the CI environment variable is set.
package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kustomshim/kustomshim/internal/shimtest"
)

const (
	rulesFile     = "prometheus/kustom-shim.rules.yml"
	rulesTestFile = "prometheus/kustom-shim.rules.test.yml"
	// The unit tests that need more than 7 days of data, evaluated hourly.
	evidenceTestFile = "prometheus/kustom-shim.evidence.test.yml"
	dashboardFile    = "grafana/kustom-shim-dashboard.json"
	readmeFile       = "README.md"
	rootReadmeFile   = "../README.md"
)

// ruleTestFiles are all the promtool unit test files.
var ruleTestFiles = []string{rulesTestFile, evidenceTestFile}

// The metrics kustom-shim exports: the contract these files are written for
// (module/metrics.go).
var metricNames = map[string]bool{
	"kustom_shim_requests_total":                    true,
	"kustom_shim_request_duration_seconds":          true,
	"kustom_shim_last_used_timestamp_seconds":       true,
	"kustom_shim_last_success_timestamp_seconds":    true,
	"kustom_shim_last_failure_timestamp_seconds":    true,
	"kustom_shim_observing_since_timestamp_seconds": true,
	"kustom_shim_credentials_total":                 true,
	"kustom_shim_refused_total":                     true,
	"kustom_shim_deprecated_calls_total":            true,
	"kustom_shim_connections_handed_over_total":     true,
}

// histogramMetric is the only histogram; its series carry these suffixes.
const histogramMetric = "kustom_shim_request_duration_seconds"

var histogramSuffixes = []string{"_bucket", "_sum", "_count"}

// Panels the dashboard must have, by title.
var requiredPanels = []string{
	"Switch complete?",
	"Shim removable?",
	"Evidence: observed for",
	"Last call per row",
	"Traffic by host",
	"Refusals by reason",
	"Credential results",
	"Upstream latency p50 / p99",
	"Deprecated endpoint calls",
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// promtoolPath finds promtool, skipping the test without it (failing in CI).
func promtoolPath(t *testing.T) string {
	t.Helper()
	return shimtest.Tool(t, "prometheus", "promtool")
}

// runPromtool runs promtool with args and fails the test on a non-zero exit.
func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	bin := promtoolPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPromtoolCheckRules(t *testing.T) {
	t.Parallel()
	out := runPromtool(t, "check", "rules", "--lint=all", "--lint-fatal", rulesFile)
	if !strings.Contains(out, "SUCCESS") || strings.Contains(out, "FAILED") ||
		strings.Contains(strings.ToLower(out), "warning") {
		t.Fatalf("promtool check rules reported a problem:\n%s", out)
	}
	t.Logf("%s", out)
}

func TestPromtoolTestRules(t *testing.T) {
	t.Parallel()
	out := runPromtool(t, append([]string{"test", "rules"}, ruleTestFiles...)...)
	if !strings.Contains(out, "SUCCESS") || strings.Contains(out, "FAILED") {
		t.Fatalf("promtool test rules reported a problem:\n%s", out)
	}
	t.Logf("%s", out)
}

var (
	alertRe   = regexp.MustCompile(`(?m)^\s*- alert:\s*(\S+)\s*$`)
	recordRe  = regexp.MustCompile(`(?m)^\s*- record:\s*(\S+)\s*$`)
	ruleSplit = regexp.MustCompile(`(?m)^\s*- (?:alert|record):`)
)

// recordedNames returns the recording rule names defined in the rules file.
func recordedNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, m := range recordRe.FindAllStringSubmatch(readFile(t, rulesFile), -1) {
		names[m[1]] = true
	}
	if len(names) == 0 {
		t.Fatalf("%s defines no recording rules", rulesFile)
	}
	return names
}

// TestRulesShape checks what promtool does not: every alert has a for:,
// a severity and both annotations, and every rule is exercised by the unit
// tests (each alert both firing and not firing, each record evaluated).
func TestRulesShape(t *testing.T) {
	rules := readFile(t, rulesFile)
	if !strings.Contains(rules, "- name: kustom-shim\n") {
		t.Errorf("%s: no rule group named kustom-shim", rulesFile)
	}
	starts := ruleSplit.FindAllStringIndex(rules, -1)
	var alerts []string
	for i, s := range starts {
		end := len(rules)
		if i+1 < len(starts) {
			end = starts[i+1][0]
		}
		chunk := rules[s[0]:end]
		m := alertRe.FindStringSubmatch(chunk)
		if m == nil {
			continue
		}
		alerts = append(alerts, m[1])
		for _, want := range []string{"\n        for: ", "\n          severity: ", "\n          summary: ", "\n          description: "} {
			if !strings.Contains(chunk, want) {
				t.Errorf("alert %s has no %q", m[1], strings.TrimSpace(want))
			}
		}
	}
	if len(alerts) < 4 {
		t.Fatalf("%s: found only %d alerts: %v", rulesFile, len(alerts), alerts)
	}
	for _, name := range []string{"KustomShimKlarnaHostStillUsed", "KustomShimCredentialsRejected",
		"KustomShimUpstreamErrors", "KustomShimDeprecatedEndpointCalled"} {
		if !slices.Contains(alerts, name) {
			t.Errorf("%s: alert %s is missing", rulesFile, name)
		}
	}

	// Which alerts the unit tests expect to fire, and not to fire.
	fires, quiet := map[string]bool{}, map[string]bool{}
	var testText string
	for _, f := range ruleTestFiles {
		testText += readFile(t, f) + "\n"
	}
	lines := strings.Split(testText, "\n")
	for i, line := range lines {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "alertname: ")
		if !ok {
			continue
		}
		for _, next := range lines[i+1:] {
			next = strings.TrimSpace(next)
			if next == "" || strings.HasPrefix(next, "#") {
				continue
			}
			switch next {
			case "exp_alerts: []":
				quiet[name] = true
			case "exp_alerts:":
				fires[name] = true
			}
			break
		}
	}
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("%v have no test case where alert %s fires", ruleTestFiles, a)
		}
		if !quiet[a] {
			t.Errorf("%v have no test case where alert %s stays quiet", ruleTestFiles, a)
		}
	}
	for name := range recordedNames(t) {
		if !strings.Contains(testText, "- expr: "+name+"\n") {
			t.Errorf("%v have no promql_expr_test for recording rule %s", ruleTestFiles, name)
		}
	}
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	RefID      string         `json:"refId"`
	Expr       string         `json:"expr"`
	Datasource *datasourceRef `json:"datasource"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    struct {
		H int `json:"h"`
		W int `json:"w"`
		X int `json:"x"`
		Y int `json:"y"`
	} `json:"gridPos"`
	Targets []target `json:"targets"`
	Panels  []panel  `json:"panels"` // a collapsed row's panels
}

type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query string `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

func loadDashboard(t *testing.T) (dashboard, []panel) {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal([]byte(readFile(t, dashboardFile)), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var flat []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			flat = append(flat, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return d, flat
}

// datasourceVars are the names of the dashboard's datasource variables.
func datasourceVars(d dashboard) map[string]bool {
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			vars[v.Name] = true
		}
	}
	return vars
}

var templatedUID = regexp.MustCompile(`^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))$`)

// templatedVar returns the variable a datasource uid refers to, or "".
func templatedVar(uid string) string {
	m := templatedUID.FindStringSubmatch(uid)
	if m == nil {
		return ""
	}
	return m[1] + m[2]
}

func TestDashboardStructure(t *testing.T) {
	d, panels := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard needs a title and a uid, got %q / %q", d.Title, d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want 36 or later (datasource references as objects)", d.SchemaVersion)
	}
	vars := datasourceVars(d)
	if len(vars) == 0 {
		t.Fatalf("templating has no datasource variable of type prometheus")
	}
	if len(panels) == 0 {
		t.Fatal("dashboard has no panels")
	}

	ids := map[int]string{}
	titles := map[string]panel{}
	queries := 0
	for _, p := range panels {
		if p.ID <= 0 {
			t.Errorf("panel %q has no id", p.Title)
		} else if other, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.Title == "" {
			t.Errorf("panel %d has no title", p.ID)
		}
		titles[p.Title] = p
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || !vars[templatedVar(p.Datasource.UID)] {
			t.Errorf("panel %q: datasource %+v is not a templated datasource variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			queries++
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: missing or duplicate refId %q", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if !strings.Contains(tg.Expr, "kustom_shim_") {
				t.Errorf("panel %q query %s does not use a kustom_shim metric: %q", p.Title, tg.RefID, tg.Expr)
			}
			if tg.Datasource != nil && !vars[templatedVar(tg.Datasource.UID)] {
				t.Errorf("panel %q query %s: datasource %+v is not templated", p.Title, tg.RefID, tg.Datasource)
			}
		}
	}
	if queries == 0 {
		t.Error("dashboard has no queries")
	}
	for _, title := range requiredPanels {
		if _, ok := titles[title]; !ok {
			t.Errorf("dashboard has no panel titled %q", title)
		}
	}
	if p, ok := titles["Switch complete?"]; ok {
		if p.Type != "stat" || len(p.Targets) != 1 || !strings.Contains(p.Targets[0].Expr, "== bool 0") {
			t.Errorf("\"Switch complete?\" should be a stat panel with one yes/no (== bool 0) query, got %s %+v", p.Type, p.Targets)
		}
	}
}

// TestDashboardDatasourcesTemplated walks the whole JSON, not just the
// fields the structs know, so no hard-coded datasource uid slips in anywhere.
func TestDashboardDatasourcesTemplated(t *testing.T) {
	d, _ := loadDashboard(t)
	vars := datasourceVars(d)
	var raw any
	if err := json.Unmarshal([]byte(readFile(t, dashboardFile)), &raw); err != nil {
		t.Fatal(err)
	}
	refs := 0
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, child := range v {
				p := path + "." + k
				if k == "datasource" {
					refs++
					switch ds := child.(type) {
					case string:
						if !vars[templatedVar(ds)] {
							t.Errorf("%s = %q is not a templated datasource variable", p, ds)
						}
					case map[string]any:
						uid, _ := ds["uid"].(string)
						if !vars[templatedVar(uid)] {
							t.Errorf("%s.uid = %q is not a templated datasource variable", p, uid)
						}
						if typ, ok := ds["type"]; ok && typ != "prometheus" {
							t.Errorf("%s.type = %v, want prometheus", p, typ)
						}
					default:
						t.Errorf("%s = %v: want a templated datasource reference", p, child)
					}
					continue
				}
				walk(p, child)
			}
		case []any:
			for i, child := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), child)
			}
		}
	}
	walk("", raw)
	if refs == 0 {
		t.Error("dashboard has no datasource references at all")
	}
}

var (
	shimToken = regexp.MustCompile(`kustom_shim[A-Za-z0-9_:]*`)
	// A metric name right before a label matcher or a range: name{ or name[.
	selectorToken = regexp.MustCompile(`([A-Za-z_:][A-Za-z0-9_:]*)[{\[]`)
)

// knownName reports whether name is one of the exported metrics, a histogram
// series, or a recording rule from the rules file.
func knownName(name string, recorded map[string]bool) bool {
	if strings.Contains(name, ":") {
		return recorded[name]
	}
	if metricNames[name] {
		return true
	}
	for _, s := range histogramSuffixes {
		if name == histogramMetric+s {
			return true
		}
	}
	return false
}

// TestMetricNames guards against typos: every kustom_shim name in the rules,
// their tests, the dashboard and the README must be part of the contract.
func TestMetricNames(t *testing.T) {
	if len(metricNames) != 10 {
		t.Fatalf("metricNames should list the ten exported metrics, has %d", len(metricNames))
	}
	recorded := recordedNames(t)
	for name := range recorded {
		if !strings.HasPrefix(name, "kustom_shim:") {
			t.Errorf("recording rule %s should start with kustom_shim:", name)
		}
	}
	for _, file := range []string{rulesFile, rulesTestFile, evidenceTestFile, dashboardFile, readmeFile} {
		sc := bufio.NewScanner(strings.NewReader(readFile(t, file)))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		seen := 0
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			for _, tok := range shimToken.FindAllString(line, -1) {
				seen++
				if !knownName(tok, recorded) {
					t.Errorf("%s:%d: unknown metric name %q", file, n, tok)
				}
			}
			if file == readmeFile || strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue // prose, shell and comments, not only PromQL
			}
			for _, m := range selectorToken.FindAllStringSubmatch(line, -1) {
				if name := m[1]; name != "up" && !knownName(name, recorded) {
					t.Errorf("%s:%d: selector on unknown metric %q", file, n, name)
				}
			}
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if seen == 0 {
			t.Errorf("%s mentions no kustom_shim metric", file)
		}
	}
}

// grafanaVars are Grafana's built-in interval variables, replaced by a
// duration so that promtool can parse the queries.
var grafanaVars = regexp.MustCompile(`\$\{?__(?:rate_interval|interval|range)\}?`)

// checkExprsParse writes exprs as recording rules to a temporary file and has
// promtool parse them.
func checkExprsParse(t *testing.T, exprs map[string]string) {
	t.Helper()
	if len(exprs) == 0 {
		t.Fatal("no expressions to check")
	}
	names := make([]string, 0, len(exprs))
	for name := range exprs {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("groups:\n  - name: parse-check\n    rules:\n")
	for _, name := range names {
		expr := grafanaVars.ReplaceAllString(exprs[name], "5m")
		quoted, err := json.Marshal(expr) // a JSON string is a YAML double-quoted scalar
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "      - record: %s\n        expr: %s\n", name, quoted)
	}
	file := filepath.Join(t.TempDir(), "exprs.rules.yml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, "check", "rules", file)
}

func TestDashboardQueriesParse(t *testing.T) {
	t.Parallel()
	_, panels := loadDashboard(t)
	exprs := map[string]string{}
	for _, p := range panels {
		for _, tg := range p.Targets {
			exprs[fmt.Sprintf("dashboard:panel_%d_%s", p.ID, tg.RefID)] = tg.Expr
		}
	}
	checkExprsParse(t, exprs)
}

var promqlBlock = regexp.MustCompile("(?s)```promql\n(.*?)```")

// readmes are the files whose promql blocks must parse, and whose first
// block must be the tested answer to "is the switch complete?".
var readmes = []string{readmeFile, rootReadmeFile}

func TestReadmeQueriesParse(t *testing.T) {
	t.Parallel()
	exprs := map[string]string{}
	for n, file := range readmes {
		blocks := promqlBlock.FindAllStringSubmatch(readFile(t, file), -1)
		if len(blocks) == 0 {
			t.Fatalf("%s has no ```promql blocks", file)
		}
		for i, m := range blocks {
			exprs[fmt.Sprintf("readme:file_%d_block_%d", n+1, i+1)] = m[1]
		}
	}
	checkExprsParse(t, exprs)
}

// oneLine is expr with its white space collapsed, for comparing queries.
func oneLine(expr string) string { return strings.Join(strings.Fields(expr), " ") }

// exprHeader is a promql_expr_test whose expr is a block scalar, optionally
// with a YAML anchor that later tests reuse: `- expr: |` or
// `- expr: &name |`.
var exprHeader = regexp.MustCompile(`^- expr: (?:&[A-Za-z0-9_]+ )?\|$`)

// testedExprs returns every block-scalar expression that the unit tests
// evaluate, white space collapsed.
func testedExprs(t *testing.T) map[string]bool {
	t.Helper()
	tested := map[string]bool{}
	for _, file := range ruleTestFiles {
		lines := strings.Split(readFile(t, file), "\n")
		for i, line := range lines {
			if !exprHeader.MatchString(strings.TrimSpace(line)) {
				continue
			}
			var expr []string
			for _, l := range lines[i+1:] {
				if !strings.HasPrefix(l, "          ") {
					break
				}
				expr = append(expr, l)
			}
			tested[oneLine(strings.Join(expr, "\n"))] = true
		}
	}
	return tested
}

// TestReadmeSwitchQueryIsTested keeps the READMEs' answer to "is the switch
// complete?" identical to the expression the promtool unit tests evaluate.
func TestReadmeSwitchQueryIsTested(t *testing.T) {
	tested := testedExprs(t)
	for _, file := range readmes {
		blocks := promqlBlock.FindAllStringSubmatch(readFile(t, file), -1)
		if len(blocks) == 0 {
			t.Fatalf("%s has no ```promql blocks", file)
		}
		if !tested[oneLine(blocks[0][1])] {
			t.Errorf("the first promql block in %s is not evaluated by any promql_expr_test in %v", file, ruleTestFiles)
		}
	}
}

// The dashboard panels that answer the switch questions without the
// recording rules; their queries must be the ones the unit tests evaluate.
var testedPanels = []string{"Switch complete?", "Shim removable?", "Evidence: observed for", "Last call per row"}

func TestDashboardSwitchQueriesAreTested(t *testing.T) {
	_, panels := loadDashboard(t)
	tested := testedExprs(t)
	byTitle := map[string]panel{}
	for _, p := range panels {
		byTitle[p.Title] = p
	}
	for _, title := range testedPanels {
		p, ok := byTitle[title]
		if !ok {
			t.Errorf("dashboard has no panel %q", title)
			continue
		}
		for _, tg := range p.Targets {
			if strings.Contains(tg.Expr, "kustom_shim:") {
				t.Errorf("panel %q query %s uses a recording rule; it should work without the rules", title, tg.RefID)
			}
			if !tested[oneLine(tg.Expr)] {
				t.Errorf("panel %q query %s is not evaluated by any promql_expr_test in %v", title, tg.RefID, ruleTestFiles)
			}
		}
	}
	// The stat says what README.md says.
	blocks := promqlBlock.FindAllStringSubmatch(readFile(t, readmeFile), -1)
	if p, ok := byTitle["Switch complete?"]; ok && len(blocks) > 0 && len(p.Targets) == 1 &&
		oneLine(p.Targets[0].Expr) != oneLine(blocks[0][1]) {
		t.Errorf("the \"Switch complete?\" panel's query differs from the first promql block in %s", readmeFile)
	}
}
