package module

import (
	"errors"
	"testing"
)

func TestRewriteJSONFields(t *testing.T) {
	o := Origins{Upstream: "https://api.kustom.co", Client: "http://localhost:8080"}
	cases := []struct {
		name    string
		fields  bodyFields
		in      string
		want    string // "" means: unchanged, byte for byte
		changed int
	}{
		{"top-level fields", hppSessionURLs,
			`{"session_id":"s1","session_url":"https://api.kustom.co/hpp/v1/sessions/s1","redirect_url":"https://pay.kustom.co/x","distribution_url":"https://api.kustom.co/hpp/v1/sessions/s1/distribution"}`,
			`{"session_id":"s1","session_url":"http://localhost:8080/hpp/v1/sessions/s1","redirect_url":"https://pay.kustom.co/x","distribution_url":"http://localhost:8080/hpp/v1/sessions/s1/distribution"}`, 2},
		{"nested pagination, numbers and order kept", paginationURLs,
			`{"payouts":[{"amount":12345678901234567890,"rate":1.10,"x":1e400}],"pagination":{"count":20,"next":"https://api.kustom.co/settlements/v1/payouts?offset=20&size=20","prev":null}}`,
			`{"payouts":[{"amount":12345678901234567890,"rate":1.10,"x":1e400}],"pagination":{"count":20,"next":"http://localhost:8080/settlements/v1/payouts?offset=20&size=20","prev":null}}`, 1},
		{"white space dropped only when something changed", paginationURLs,
			"{\n  \"pagination\": {\n    \"next\": \"https://api.kustom.co/settlements/v1/payouts?offset=20\"\n  },\n  \"é\": \"<&>\"\n}",
			`{"pagination":{"next":"http://localhost:8080/settlements/v1/payouts?offset=20"},"é":"<&>"}`, 1},
		{"nothing to change: original bytes", paginationURLs,
			"{ \"pagination\": { \"next\": \"https://elsewhere.example/x\" } }", "", 0},
		{"field of another type left alone", hppSessionURLs,
			`{"session_url":42,"distribution_url":{"a":"https://api.kustom.co/x"}}`, "", 0},
		{"escaped string decoded and re-encoded", hppSessionURLs,
			`{"session_url":"https:\/\/api.kustom.co\/hpp\/v1\/sessions\/s1"}`,
			`{"session_url":"http://localhost:8080/hpp/v1/sessions/s1"}`, 1},
		{"same key name deeper is not the field", hppSessionURLs,
			`{"data":{"session_url":"https://api.kustom.co/x"}}`, "", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, n, err := RewriteJSONFields([]byte(c.in), c.fields, o.ToClient)
			if err != nil {
				t.Fatal(err)
			}
			want := c.want
			if want == "" {
				want = c.in
			}
			if string(got) != want || n != c.changed {
				t.Errorf("got %s (%d changed)\nwant %s (%d)", got, n, want, c.changed)
			}
		})
	}
}

func TestRewriteJSONFieldsRefusesWhatIsNotAnObject(t *testing.T) {
	for _, in := range []string{``, `[]`, `"s"`, `{"a":1`, `{"a":1}{"b":2}`, `<html></html>`, `{"a":1} x`} {
		got, n, err := RewriteJSONFields([]byte(in), hppSessionURLs, func(s string) (string, bool) { return "X", true })
		if !errors.Is(err, errNotJSONObject) || string(got) != in || n != 0 {
			t.Errorf("%q: got %q, %d, %v; want the body back unchanged and errNotJSONObject", in, got, n, err)
		}
	}
}

func TestBodyRewriteFor(t *testing.T) {
	cases := []struct {
		method, path string
		want         string // endpoint, or "" for none
	}{
		{"POST", "/hpp/v1/sessions", "POST /hpp/v1/sessions"},
		{"GET", "/hpp/v1/sessions/s1", "GET /hpp/v1/sessions/{id}"},
		{"DELETE", "/hpp/v1/sessions/s1", ""},
		{"POST", "/hpp/v1/sessions/s1/distribution", ""},
		{"GET", "/settlements/v1/payouts", "GET /settlements/v1/payouts"},
		{"GET", "/settlements/v1/transactions", "GET /settlements/v1/transactions"},
		{"GET", "/settlements/v1/reports/payout", ""},
		{"GET", "/settlements/v1/payouts/summary", ""},
		{"GET", "/checkout/v3/orders/o1", ""},
	}
	for _, c := range cases {
		got := ""
		if br := bodyRewriteFor(c.method, c.path); br != nil {
			got = br.endpoint
		}
		if got != c.want {
			t.Errorf("%s %s: %q, want %q", c.method, c.path, got, c.want)
		}
	}
}

func TestRewriteToKustom(t *testing.T) {
	hm, err := NewHostMap(nil, "")
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"https://api.klarna.com/checkout/v3/orders/o1":               "https://api.kustom.co/checkout/v3/orders/o1",
		"https://API.Klarna.com:443/checkout/v3/orders/o1?x=1":       "https://api.kustom.co/checkout/v3/orders/o1?x=1",
		"https://api-oc.playground.klarna.com/checkout/v3/orders/o1": "https://api.playground.kustom.co/checkout/v3/orders/o1",
		"https://api.kustom.co/checkout/v3/orders/o1":                "",
		"http://api.klarna.com/checkout/v3/orders/o1":                "",
		"https://api.klarna.com:8443/checkout/v3/orders/o1":          "",
		"https://user@api.klarna.com/checkout/v3/orders/o1":          "",
		"https://pay.klarna.com/x":                                   "",
		"https://api.klarna.com.evil.example/x":                      "",
		"/checkout/v3/orders/o1":                                     "",
	}
	for in, want := range cases {
		got, ok := hm.RewriteToKustom(in)
		if want == "" {
			if ok || got != in {
				t.Errorf("%s: rewritten to %s", in, got)
			}
			continue
		}
		if !ok || got != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
}
