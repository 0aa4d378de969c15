package shimtest

import (
	"io"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is one parsed Prometheus text exposition.
type Scrape struct {
	Text     string
	Families map[string]*dto.MetricFamily
}

// ScrapeURL fetches and parses a /metrics endpoint.
func ScrapeURL(t testing.TB, url string) Scrape {
	t.Helper()
	resp, err := Client().Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scraping %s: status %d, %v", url, resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("parsing scrape: %v", err)
	}
	return Scrape{Text: string(b), Families: fams}
}

// Value is the value of the series of family name whose labels include all
// of want (counter, gauge, or a histogram's sample count); 0 if absent.
func (s Scrape) Value(name string, want map[string]string) float64 {
	var total float64
	for _, m := range s.matching(name, want) {
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total
}

// Series counts the series of family name.
func (s Scrape) Series(name string) int { return len(s.matching(name, nil)) }

// Labels lists the label sets of family name's series.
func (s Scrape) Labels(name string) []map[string]string {
	var out []map[string]string
	for _, m := range s.matching(name, nil) {
		l := map[string]string{}
		for _, lp := range m.Label {
			l[lp.GetName()] = lp.GetValue()
		}
		out = append(out, l)
	}
	return out
}

func (s Scrape) matching(name string, want map[string]string) []*dto.Metric {
	f := s.Families[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
outer:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue outer
			}
		}
		out = append(out, m)
	}
	return out
}
