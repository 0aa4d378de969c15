package module

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
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
	api promv1.API
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

// evidenceQueries are the PromQL expressions the report is built from, at
// window w. Coverage looks back twice the window, so that a Prometheus that
// has scraped the fleet for longer than the window shows it.
func evidenceQueries(w time.Duration) (used, ok, failed, claimed, covered string) {
	r := promRange(w)
	rowMax := func(metric, extra string) string {
		return fmt.Sprintf("max by (%s%s) (max_over_time(%s[%s]))", rowLabels, extra, metric, r)
	}
	step := max(time.Second, 2*w/500).Truncate(time.Second)
	return rowMax("kustom_shim_last_used_timestamp_seconds", ""),
		rowMax("kustom_shim_last_success_timestamp_seconds", ""),
		rowMax("kustom_shim_last_failure_timestamp_seconds", ", reason"),
		fmt.Sprintf("min(min_over_time(kustom_shim_observing_since_timestamp_seconds[%s]))", promRange(2*w)),
		fmt.Sprintf("min(min_over_time(timestamp(kustom_shim_observing_since_timestamp_seconds)[%s:%s]))",
			promRange(2*w), promRange(step))
}

// Evidence returns the fleet's rows over the window and since when the fleet
// has been observed: the later of the earliest observing-since an instance
// reported and the first sample Prometheus holds of it (a shim's own claim
// says nothing about the time nobody scraped it).
func (p *PrometheusSource) Evidence(ctx context.Context, now time.Time, window time.Duration) ([]Usage, time.Time, error) {
	qUsed, qOK, qFailed, qClaimed, qCovered := evidenceQueries(window)
	query := func(q string) (model.Vector, error) {
		ctx, cancel := context.WithTimeout(ctx, promQueryTimeout)
		defer cancel()
		v, _, err := p.api.Query(ctx, q, now)
		if err != nil {
			return nil, err
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
	var since time.Time
	for _, q := range []string{qClaimed, qCovered} {
		if vec, err = query(q); err != nil {
			return nil, time.Time{}, err
		}
		if len(vec) == 0 {
			return usageList(rows), time.Time{}, nil // nothing scraped: no evidence
		}
		since = later(since, promTime(vec[0].Value))
	}
	return usageList(rows), since, nil
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
