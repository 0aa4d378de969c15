package module

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The collectors live for the whole process and are registered on each new
// config's registry (Caddy makes one per config load), so counters carry on
// across `caddy reload` instead of starting over.
var shimMetrics = struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	credentials *prometheus.CounterVec
	refused     *prometheus.CounterVec
	deprecated  *prometheus.CounterVec
	handedOver  prometheus.Counter
	evidence    prometheus.Collector
}{
	requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kustom_shim_requests_total",
		Help: "Requests handled by kustom-shim, by service, the API host the client addressed (or local), where it was sent, and the status returned.",
	}, []string{"service", "from_host", "to_host", "code"}),
	duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kustom_shim_request_duration_seconds",
		Help:    "Upstream round trip, from sending the request to receiving the response header.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"service"}),
	credentials: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kustom_shim_credentials_total",
		Help: "Credential decisions: swapped for Kustom keys, kept as sent, or rejected.",
	}, []string{"credential", "result"}),
	refused: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kustom_shim_refused_total",
		Help: "Requests the shim answered itself, by reason (the Kustom-Shim-Error header).",
	}, []string{"reason"}),
	deprecated: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kustom_shim_deprecated_calls_total",
		Help: "Calls to order-management endpoints Kustom has deprecated.",
	}, []string{"service", "endpoint"}),
	handedOver: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "kustom_shim_connections_handed_over_total",
		Help: "Kept-alive client connections a reload passed from the old config to the new one (kustom_drain) instead of closing them.",
	}),
	evidence: evidenceCollector{},
}

// The evidence gauges carry a row's labels (all bounded by the config; see
// UsageKey), so that Prometheus can judge the switch across a fleet exactly
// as the status page does.
var (
	evidenceLabels = []string{"service", "from_host", "to_host", "credential", "key"}
	lastUsedDesc   = prometheus.NewDesc("kustom_shim_last_used_timestamp_seconds",
		"Unix time of the last call per service, host addressed, destination, store (credential, \"\" for the app's own key) and key (swapped or kept), across the instances sharing storage.",
		evidenceLabels, nil)
	lastSuccessDesc = prometheus.NewDesc("kustom_shim_last_success_timestamp_seconds",
		"Unix time of the last call the upstream answered below 500 and not 401/403, per row as for last_used.",
		evidenceLabels, nil)
	lastFailureDesc = prometheus.NewDesc("kustom_shim_last_failure_timestamp_seconds",
		"Unix time of the last failed call per row, with why: upstream_unreachable, upstream_timeout, upstream_5xx or kustom_rejected_key (401/403).",
		append(append([]string(nil), evidenceLabels...), "reason"), nil)
	observingSinceDesc = prometheus.NewDesc("kustom_shim_observing_since_timestamp_seconds",
		"Unix time since which this storage (and its peers) has been observing calls; it survives restarts, and a wiped storage starts over.",
		nil, nil)
)

// evidenceCollector reports the running app's evidence, so that the gauges,
// the status page and the stored state never disagree.
type evidenceCollector struct{}

func (evidenceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{lastUsedDesc, lastSuccessDesc, lastFailureDesc, observingSinceDesc} {
		ch <- d
	}
}

func (evidenceCollector) Collect(ch chan<- prometheus.Metric) {
	a := currentApp()
	if a == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(observingSinceDesc, prometheus.GaugeValue,
		unixSeconds(a.Tracker().FleetObservingSince()))
	for _, u := range a.Usage() {
		labels := []string{string(u.Service), u.FromHost, u.ToHost, u.Credential, u.Key}
		ch <- prometheus.MustNewConstMetric(lastUsedDesc, prometheus.GaugeValue, unixSeconds(u.LastUsed), labels...)
		if !u.LastOK.IsZero() {
			ch <- prometheus.MustNewConstMetric(lastSuccessDesc, prometheus.GaugeValue, unixSeconds(u.LastOK), labels...)
		}
		if !u.LastFailed.IsZero() {
			ch <- prometheus.MustNewConstMetric(lastFailureDesc, prometheus.GaugeValue, unixSeconds(u.LastFailed),
				append(labels, string(u.LastFailure))...)
		}
	}
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// durationBy holds the duration histogram's series per service, resolved
// once: a label lookup hashes its values on every call.
var durationBy = func() map[Service]prometheus.Observer {
	m := map[Service]prometheus.Observer{}
	for _, svc := range append(append([]Service(nil), Services...), Unmatched) {
		m[svc] = shimMetrics.duration.WithLabelValues(string(svc))
	}
	return m
}()

// observeDuration records an upstream round trip for svc.
func observeDuration(svc Service, seconds float64) {
	if o, ok := durationBy[svc]; ok {
		o.Observe(seconds)
		return
	}
	shimMetrics.duration.WithLabelValues(string(svc)).Observe(seconds)
}

// registerMetrics adds the shim's collectors to reg; every module that uses
// them calls it, and a second registration on the same registry is a no-op.
func registerMetrics(reg *prometheus.Registry) {
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{shimMetrics.requests, shimMetrics.duration, shimMetrics.credentials,
		shimMetrics.refused, shimMetrics.deprecated, shimMetrics.handedOver, shimMetrics.evidence} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				panic(err) // a programming error: conflicting descriptors
			}
		}
	}
}

// Label values for requests that never got as far as a route or an upstream.
const (
	labelUnknownHost = "unknown" // from_host of a request for a host the map does not know
	labelNone        = "none"    // to_host of a request the shim answered itself
)

// statusLabel bounds the code label to real HTTP status codes.
func statusLabel(code int) string {
	if code < 100 || code > 599 {
		return "other"
	}
	if code < len(statusLabels) {
		return statusLabels[code]
	}
	return strconv.Itoa(code)
}

var statusLabels = func() []string {
	s := make([]string, 600)
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()
