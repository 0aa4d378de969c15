package module

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// A fleet of sidecars each knows only its own calls, and a pod whose storage
// is wiped forgets them. Prometheus scrapes them all and keeps their history:
// it is the fleet's shared, durable store of switch evidence. A
// PrometheusSource builds the same report as the local one from it, across
// every instance it scrapes, over the window.

// PrometheusSource reads switch evidence from a Prometheus server.
type PrometheusSource struct {
	URL string
	// Match narrows every query to this fleet's series (label matchers
	// such as job="kustom-shim",namespace="shop"), so that a staging shim
	// scraped by the same Prometheus lends production no evidence.
	Match string
	api   promv1.API
}

// promMatchers is a list of PromQL label matchers, without the braces.
var promMatchers = regexp.MustCompile(`^\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\\n]|\\.)*"\s*(,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\\n]|\\.)*"\s*)*,?\s*$`)

// WithMatch sets the label matchers every query is narrowed to.
func (p *PrometheusSource) WithMatch(match string) (*PrometheusSource, error) {
	if match != "" && (!promMatchers.MatchString(match) || strings.ContainsAny(match, "\r\n")) {
		return nil, fmt.Errorf("prometheus_match: %q is not a list of label matchers such as job=\"kustom-shim\",namespace=\"shop\"", match)
	}
	p.Match = strings.TrimSpace(match)
	return p, nil
}

// promQueryTimeout bounds each query: a status page that hangs helps nobody,
// and a slow Prometheus is reported as unavailable, never as green.
const promQueryTimeout = 10 * time.Second

// NewPrometheusSource checks the URL (http or https, a host, no user info:
// a secret in it would show in the config and on the page) and builds the
// client.
func NewPrometheusSource(raw string) (*PrometheusSource, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("prometheus: not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("prometheus: %q must be an http:// or https:// URL", u.Redacted())
	case u.Host == "":
		return nil, fmt.Errorf("prometheus: %q has no host", u.Redacted())
	case u.User != nil:
		return nil, fmt.Errorf("prometheus: user info in the URL is not allowed (it would show in the config and the page)")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("prometheus: %q must have no query or fragment", u.Redacted())
	}
	c, err := promapi.NewClient(promapi.Config{Address: raw, RoundTripper: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		ResponseHeaderTimeout: promQueryTimeout,
		MaxIdleConnsPerHost:   2,
	}})
	if err != nil {
		return nil, fmt.Errorf("prometheus: %v", err)
	}
	return &PrometheusSource{URL: raw, api: promv1.NewAPI(c)}, nil
}

// rowLabels are the metric labels that make a row; Prometheus adds job and
// instance, which the queries aggregate away so that the fleet is one.
const rowLabels = "service, from_host, to_host, credential, key"

// promRange is d as a PromQL duration.
func promRange(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }

// selector is metric narrowed to this fleet. Rows need a key label: series
// of a shim from before the switch report had them carry no outcome.
func (p *PrometheusSource) selector(metric string, row bool) string {
	m := p.Match
	if row {
		if m != "" {
			m += ","
		}
		m += `key!=""`
	}
	return metric + "{" + m + "}"
}

// evidenceQueries are the PromQL expressions the report is built from, at
// window w: per row the latest use, success and failure (with its reason),
// the earliest observing-since an instance claimed, and the fleet's
// presence over time (a range query), to find where unbroken coverage
// began.
func (p *PrometheusSource) evidenceQueries(w time.Duration) (used, ok, failed, claimed, present string) {
	r := promRange(w)
	rowMax := func(metric, extra string) string {
		return fmt.Sprintf("max by (%s%s) (max_over_time(%s[%s]))", rowLabels, extra, p.selector(metric, true), r)
	}
	since := p.selector("kustom_shim_observing_since_timestamp_seconds", false)
	return rowMax("kustom_shim_last_used_timestamp_seconds", ""),
		rowMax("kustom_shim_last_success_timestamp_seconds", ""),
		rowMax("kustom_shim_last_failure_timestamp_seconds", ", reason"),
		fmt.Sprintf("min(min_over_time(%s[%s]))", since, promRange(2*w)),
		fmt.Sprintf("count(%s)", since)
}

// coveragePoints is how many steps the presence query spans (Prometheus
// answers at most 11 000 per series).
const coveragePoints = 10000

// coverageGap is the longest break in the fleet's presence that still
// counts as unbroken: ObservationGap, but at most a tenth of the window,
// and never less than three steps of the presence query.
func coverageGap(w, step time.Duration) time.Duration {
	return max(min(ObservationGap, w/10), 3*step)
}

// Evidence returns the fleet's rows over the window and since when the fleet
// has been observed without a break: the later of the earliest
// observing-since an instance reported and the start of Prometheus'
// unbroken record of the fleet (a shim's claim says nothing about the time
// nobody scraped it). A warning from Prometheus (partial data) is an error:
// the missing part could hold the failures.
func (p *PrometheusSource) Evidence(ctx context.Context, now time.Time, window time.Duration) ([]Usage, time.Time, error) {
	qUsed, qOK, qFailed, qClaimed, qPresent := p.evidenceQueries(window)
	query := func(q string) (model.Vector, error) {
		ctx, cancel := context.WithTimeout(ctx, promQueryTimeout)
		defer cancel()
		v, warnings, err := p.api.Query(ctx, q, now)
		if err != nil {
			return nil, err
		}
		if len(warnings) > 0 {
			return nil, fmt.Errorf("partial answer to %q: %s", q, strings.Join(warnings, "; "))
		}
		vec, ok := v.(model.Vector)
		if !ok {
			return nil, fmt.Errorf("query %q returned %s, not a vector", q, v.Type())
		}
		return vec, nil
	}
	rows := map[UsageKey]*Usage{}
	row := func(m model.Metric) *Usage {
		k := UsageKey{Service: Service(m["service"]), FromHost: string(m["from_host"]), ToHost: string(m["to_host"]),
			Credential: string(m["credential"]), Key: string(m["key"])}
		if rows[k] == nil {
			rows[k] = &Usage{UsageKey: k}
		}
		return rows[k]
	}
	vec, err := query(qUsed)
	if err != nil {
		return nil, time.Time{}, err
	}
	for _, s := range vec {
		u := row(s.Metric)
		u.LastUsed = later(u.LastUsed, promTime(s.Value))
	}
	if vec, err = query(qOK); err != nil {
		return nil, time.Time{}, err
	}
	for _, s := range vec {
		u := row(s.Metric)
		u.LastOK = later(u.LastOK, promTime(s.Value))
	}
	if vec, err = query(qFailed); err != nil {
		return nil, time.Time{}, err
	}
	for _, s := range vec {
		u, t := row(s.Metric), promTime(s.Value)
		if t.After(u.LastFailed) {
			u.LastFailed, u.LastFailure = t, Failure(s.Metric["reason"])
		}
	}
	if vec, err = query(qClaimed); err != nil {
		return nil, time.Time{}, err
	}
	if len(vec) == 0 {
		return usageList(rows), time.Time{}, nil // nothing scraped: no evidence
	}
	claimed := promTime(vec[0].Value)
	covered, err := p.coveredSince(ctx, qPresent, now, window)
	if err != nil {
		return nil, time.Time{}, err
	}
	if covered.IsZero() {
		return usageList(rows), time.Time{}, nil
	}
	return usageList(rows), later(claimed, covered), nil
}

// coveredSince is where the fleet's unbroken presence in Prometheus began,
// looking back twice the window: the first sample after the last break
// longer than coverageGap (or after the start of the record), zero when the
// fleet is not present now.
func (p *PrometheusSource) coveredSince(ctx context.Context, q string, now time.Time, w time.Duration) (time.Time, error) {
	step := max(time.Second, (2 * w / coveragePoints).Truncate(time.Second))
	ctx, cancel := context.WithTimeout(ctx, promQueryTimeout)
	defer cancel()
	v, warnings, err := p.api.QueryRange(ctx, q, promv1.Range{Start: now.Add(-2 * w), End: now, Step: step})
	if err != nil {
		return time.Time{}, err
	}
	if len(warnings) > 0 {
		return time.Time{}, fmt.Errorf("partial answer to %q: %s", q, strings.Join(warnings, "; "))
	}
	m, ok := v.(model.Matrix)
	if !ok || len(m) == 0 || len(m[0].Values) == 0 {
		return time.Time{}, nil
	}
	return unbrokenSince(m[0].Values, now, coverageGap(w, step)), nil
}

// unbrokenSince is the start of the last run of samples with no break
// longer than gap that reaches now (within gap); zero when none does.
func unbrokenSince(points []model.SamplePair, now time.Time, gap time.Duration) time.Time {
	if len(points) == 0 || now.Sub(points[len(points)-1].Timestamp.Time()) > gap {
		return time.Time{}
	}
	start := points[len(points)-1].Timestamp.Time()
	for i := len(points) - 1; i > 0; i-- {
		if points[i].Timestamp.Time().Sub(points[i-1].Timestamp.Time()) > gap {
			break
		}
		start = points[i-1].Timestamp.Time()
	}
	return start.UTC()
}

func usageList(rows map[UsageKey]*Usage) []Usage {
	out := make([]Usage, 0, len(rows))
	for _, u := range rows {
		if !u.LastUsed.IsZero() {
			out = append(out, *u)
		}
	}
	sortUsage(out)
	return out
}

// promTime reads a timestamp gauge's value (Unix seconds).
func promTime(v model.SampleValue) time.Time {
	f := float64(v)
	if f <= 0 {
		return time.Time{}
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)).UTC()
}

// Report is the fleet's report at now, or an unavailable one saying why.
func (p *PrometheusSource) Report(ctx context.Context, now time.Time, window time.Duration) StatusReport {
	us, since, err := p.Evidence(ctx, now, window)
	if err != nil {
		return UnavailableReport(now, window, "prometheus",
			fmt.Sprintf("Prometheus at %s could not be read (%v); no verdict without evidence", p.URL, err))
	}
	rep := BuildStatus(us, since, now, window)
	rep.Source = "prometheus"
	return rep
}

// UnavailableReport is the answer when the evidence cannot be read: never
// complete, with the reason.
func UnavailableReport(now time.Time, window time.Duration, source, why string) StatusReport {
	return StatusReport{GeneratedAt: now.UTC().Truncate(time.Second), Window: window, Source: source,
		Verdict: VerdictUnavailable, Error: why, ActionRequired: []StoreActions{}}
}
