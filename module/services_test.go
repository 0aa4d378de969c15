package module

import (
	"net/url"
	"testing"
)

// TestClassifyKustomEndpoints: every endpoint of the migration facts is
// counted under the service the Kustom Portal shows it in.
func TestClassifyKustomEndpoints(t *testing.T) {
	const (
		order   = "/ordermanagement/v1/orders/ord-123"
		capture = order + "/captures/cap-9"
	)
	cases := []struct {
		path string
		want Service
	}{
		// Checkout v3
		{"/checkout/v3/orders", Checkout},
		{"/checkout/v3/orders/ord-123", Checkout},
		{"/checkout/v3/orders/ord-123/abort", Checkout},
		{"/checkout/v3/orders/", Checkout},
		// Order management v1
		{order, OrderManagement},
		{order + "/acknowledge", OrderManagement},
		{order + "/authorization", OrderManagement},
		{order + "/cancel", OrderManagement},
		{order + "/extend-authorization-time", OrderManagement},
		{order + "/merchant-references", OrderManagement},
		{order + "/customer-details", OrderManagement},
		{order + "/release-remaining-authorization", OrderManagement},
		{order + "/shipping-info", OrderManagement},
		{order + "/captures", OrderManagement},
		{capture, OrderManagement},
		{capture + "/shipping-info", OrderManagement},
		{capture + "/extend-due-date", OrderManagement},
		{capture + "/extend-due-date-options", OrderManagement},
		{capture + "/trigger-send-out", OrderManagement},
		{order + "/refunds", OrderManagement},
		{order + "/refunds/ref-1", OrderManagement},
		// Settlements v1
		{"/settlements/v1/payouts", Settlement},
		{"/settlements/v1/payouts/summary", Settlement},
		{"/settlements/v1/payouts/pay-ref-1", Settlement},
		{"/settlements/v1/transactions", Settlement},
		{"/settlements/v1/reports/payout", Settlement},
		{"/settlements/v1/reports/payout-with-transactions", Settlement},
		{"/settlements/v1/reports/payouts-summary", Settlement},
		{"/settlements/v1/reports/payouts-summary-with-transactions", Settlement},
		// HPP v1
		{"/hpp/v1/sessions", HostedPaymentPage},
		{"/hpp/v1/sessions/s-1", HostedPaymentPage},
		{"/hpp/v1/sessions/s-1/distribution", HostedPaymentPage},
		// Customer token v1
		{"/customer-token/v1/tokens/tok-1", CustomerToken},
		{"/customer-token/v1/tokens/tok-1/order", CustomerToken},
		{"/customer-token/v1/tokens/tok-1/status", CustomerToken},
		// Dots inside a segment are not dot segments.
		{"/checkout/v3/orders/a.b", Checkout},
		{"/checkout/v3/orders/..a", Checkout},
		{"/settlements/v1/reports/payout.csv", Settlement},
		// A path parameter on an ordinary segment stays in that segment.
		{"/checkout/v3/orders/a;b", Checkout},
		{"/checkout/v3/orders/ord-1;x/abort", Checkout},
		// Decoded escapes that name no path structure.
		{"/checkout/v3/orders/a b", Checkout},
		{"/checkout/v3/orders/k\u00f6p", Checkout},
	}
	for _, c := range cases {
		if got := Classify(c.path); got != c.want {
			t.Errorf("Classify(%q) = %q, want %q", c.path, got, c.want)
		}
	}
	seen := map[Service]bool{}
	for _, c := range cases {
		seen[c.want] = true
	}
	for _, s := range Services {
		if !seen[s] {
			t.Errorf("service %q has no test case", s)
		}
	}
}

// TestClassifyUnmatched: Klarna products Kustom did not take over, unknown
// paths and paths that could escape a Kustom prefix are Unmatched, so they
// never go to Kustom with swapped credentials.
func TestClassifyUnmatched(t *testing.T) {
	for _, p := range []string{
		"",
		"/",
		"/payments/v1/sessions",
		"/payments/v1/authorizations/tok/order",
		"/merchantcard/v3/promises",
		"/merchantcard/v3/settlements/abc",
		"/instantshopping/v1/buttons",
		"/checkout/v3",
		"/checkout/v2/orders",
		"/checkout/v3orders",
		"/Checkout/v3/orders",
		"/CHECKOUT/V3/ORDERS",
		"/ordermanagement/v2/orders/x",
		"/hpp/v1",
		"checkout/v3/orders",
		"//checkout/v3/orders",
		"/x/checkout/v3/orders",
		// Dot segments and empty segments, whatever the prefix.
		"/checkout/v3/../../payments/v1/x",
		"/checkout/v3/../../payments/v1/sessions",
		"/ordermanagement/v1/../../payments/v1/authorizations/t/order",
		"/checkout/v3/./orders",
		"/checkout/v3//orders",
		"/checkout/v3/orders//",
		"/checkout/v3/..",
		"/checkout/v3/.",
		"/checkout/v3/orders/..",
		"/checkout/v3/orders/.",
		"/hpp/v1/sessions/../../../payments/v1/sessions",
		"/customer-token/v1/./tokens/t",
		"/settlements/v1//payouts",
		// Tomcat-style path parameters: Tomcat drops ";…" from a segment,
		// so "..;" is a ".." segment there.
		"/checkout/v3/..;/..;/payments/v1/sessions",
		"/checkout/v3/..;x=1/payments/v1/sessions",
		"/checkout/v3/orders/..;",
		"/checkout/v3/.;/orders",
		"/checkout/v3/;/orders",
		"/checkout/v3/;x/orders",
		"/checkout/v3/orders/;",
		// A literal % in the decoded path: the client sent %25, so a server
		// that decodes once more sees another path (%252e%252e is "..").
		"/checkout/v3/%2e%2e/%2e%2e/payments/v1/sessions",
		"/checkout/v3/%2E%2E/payments/v1/sessions",
		"/checkout/v3/..%2fpayments/v1/sessions",
		"/checkout/v3/orders/100%",
		// Bytes that are not UTF-8 (overlong "." among them) and control
		// characters, which servers read in different ways.
		"/checkout/v3/orders/\xff\xfe",
		"/checkout/v3/\xc0\xae\xc0\xae/payments/v1/sessions",
		"/checkout/v3/orders/\xe2\x82",
		"/checkout/v3/..\x00/payments/v1/sessions",
		"/checkout/v3/orders/a\x7f",
		"/checkout/v3/orders/a\tb",
	} {
		if got := Classify(p); got != Unmatched {
			t.Errorf("Classify(%q) = %q, want %q", p, got, Unmatched)
		}
	}
}

// TestClassifyRequestTargets classifies request targets as the client sent
// them, the way the handler sees them: net/http decodes the target into
// r.URL.Path, which Classify reads, and the proxy forwards r.URL.EscapedPath,
// which decodes to that same Path. So every escape is seen decoded once,
// and a second decoding upstream could only matter with a % left in Path.
func TestClassifyRequestTargets(t *testing.T) {
	for _, c := range []struct {
		target string
		want   Service
	}{
		{"/checkout/v3/orders/ord-1", Checkout},
		{"/checkout/v3/orders/a%20b", Checkout},
		{"/checkout/v3/orders/k%C3%B6p", Checkout},
		{"/checkout/v3/orders/a%2Fb", Checkout}, // an encoded slash inside an ID
		{"/checkout/v3/%2e%2e/%2e%2e/payments/v1/sessions", Unmatched},
		{"/checkout/v3/%2E%2E/%2E%2E/payments/v1/sessions", Unmatched},
		{"/checkout/v3/.%2e/payments/v1/sessions", Unmatched},
		{"/checkout/v3/%2e/orders", Unmatched},
		{"/checkout/v3/..%2f..%2fpayments/v1/sessions", Unmatched},
		{"/checkout/v3/%252e%252e/%252e%252e/payments/v1/sessions", Unmatched},
		{"/checkout/v3/..%252f..%252fpayments/v1/sessions", Unmatched},
		{"/checkout/v3/..;/..;/payments/v1/sessions", Unmatched},
		{"/checkout/v3/%2e%2e;/payments/v1/sessions", Unmatched},
		{"/checkout/v3/..%3b/payments/v1/sessions", Unmatched},
		{"/checkout/v3/orders/%ff%fe", Unmatched},
		{"/checkout/v3/%c0%ae%c0%ae/payments/v1/sessions", Unmatched},
		{"/checkout/v3/..%00/payments/v1/sessions", Unmatched},
		{"/checkout/v3/orders%5c..%5c..%5cpayments", Unmatched},
	} {
		u, err := url.ParseRequestURI(c.target)
		if err != nil {
			t.Fatalf("%s: %v", c.target, err)
		}
		if back, err := url.PathUnescape(u.EscapedPath()); err != nil || back != u.Path {
			t.Fatalf("%s: forwarded as %s, which decodes to %q, not %q", c.target, u.EscapedPath(), back, u.Path)
		}
		if got := Classify(u.Path); got != c.want {
			t.Errorf("request target %s (path %q): Classify = %q, want %q", c.target, u.Path, got, c.want)
		}
	}
}

func TestDeprecatedEndpoint(t *testing.T) {
	const base = "/ordermanagement/v1/orders/ord-1/captures/cap-1/"
	cases := []struct {
		method, path string
		want         string // "" = not deprecated
	}{
		{"PATCH", base + "extend-due-date", EndpointExtendDueDate},
		{"GET", base + "extend-due-date-options", EndpointExtendDueDateOptions},
		{"POST", base + "trigger-send-out", EndpointTriggerSendOut},
		{"PATCH", base + "extend-due-date/", EndpointExtendDueDate},
		// Wrong methods: a different (or no) endpoint.
		{"GET", base + "extend-due-date", ""},
		{"POST", base + "extend-due-date", ""},
		{"PATCH", base + "extend-due-date-options", ""},
		{"POST", base + "extend-due-date-options", ""},
		{"GET", base + "trigger-send-out", ""},
		{"PATCH", base + "trigger-send-out", ""},
		{"patch", base + "extend-due-date", ""},
		// Extra or missing segments.
		{"PATCH", base + "extend-due-date/x", ""},
		{"POST", base + "trigger-send-out/again", ""},
		{"PATCH", "/ordermanagement/v1/orders/ord-1/captures/extend-due-date", ""},
		{"PATCH", "/ordermanagement/v1/orders//captures/cap-1/extend-due-date", ""},
		{"PATCH", "/ordermanagement/v1/orders/ord-1/captures//extend-due-date", ""},
		{"PATCH", "/ordermanagement/v1/orders/captures/cap-1/extend-due-date", ""},
		{"PATCH", "/ordermanagement/v1/orders/ord-1/refunds/cap-1/extend-due-date", ""},
		{"PATCH", "/ordermanagement/v1/orders/ord-1/x/captures/cap-1/extend-due-date", ""},
		{"PATCH", "/checkout/v3/orders/ord-1/captures/cap-1/extend-due-date", ""},
		{"PATCH", "/ordermanagement/v2/orders/ord-1/captures/cap-1/extend-due-date", ""},
		// Ordinary order-management calls are not deprecated.
		{"POST", "/ordermanagement/v1/orders/ord-1/captures", ""},
		{"GET", "/ordermanagement/v1/orders/ord-1/captures/cap-1", ""},
		{"POST", base + "shipping-info", ""},
		{"POST", "/ordermanagement/v1/orders/ord-1/extend-authorization-time", ""},
	}
	for _, c := range cases {
		got, ok := DeprecatedEndpoint(c.method, c.path)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("DeprecatedEndpoint(%s %s) = %q, %v, want %q, %v", c.method, c.path, got, ok, c.want, c.want != "")
		}
	}
}

var classifySink Service

func BenchmarkClassify(b *testing.B) {
	paths := []struct{ name, path string }{
		{"checkout", "/checkout/v3/orders/0003a1b2-c3d4-e5f6-a7b8-c9d0e1f2a3b4"},
		{"order_management", "/ordermanagement/v1/orders/0003a1b2-c3d4/captures/cap-1/shipping-info"},
		{"customer_token", "/customer-token/v1/tokens/tok-1/order"},
		{"unmatched", "/payments/v1/sessions"},
		{"dot_segments", "/checkout/v3/../../payments/v1/sessions"},
	}
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				classifySink = Classify(p.path)
			}
		})
	}
}
