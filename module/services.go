package module

import (
	"strings"
	"unicode/utf8"
)

// Service is one of the API groups the Kustom Portal's Integrations → API page
// reports on. Its string form is the metrics label and the log field.
type Service string

const (
	Checkout          Service = "checkout"
	OrderManagement   Service = "order_management"
	Settlement        Service = "settlement"
	HostedPaymentPage Service = "hosted_payment_page"
	CustomerToken     Service = "customer_token"
	// Unmatched is every path Kustom did not take over: Klarna Payments
	// (/payments/v1/), merchant card, instant shopping and anything unknown.
	Unmatched Service = "unmatched"
)

// Services lists the Kustom services in the order the Portal shows them.
var Services = []Service{Checkout, OrderManagement, Settlement, HostedPaymentPage, CustomerToken}

var servicePrefixes = []struct {
	prefix  string
	service Service
}{
	{"/checkout/v3/", Checkout},
	{"/ordermanagement/v1/", OrderManagement},
	{"/settlements/v1/", Settlement},
	{"/hpp/v1/", HostedPaymentPage},
	{"/customer-token/v1/", CustomerToken},
}

// Classify maps a request path to its service. A path another server could
// read as leaving its prefix is Unmatched whatever the prefix:
// "/checkout/v3/../../payments/v1/x" must not borrow the checkout prefix to
// reach a Klarna Payments endpoint with Kustom credentials (see cleanPath).
//
// path is r.URL.Path, the request target decoded once. The proxy forwards
// r.URL.EscapedPath(), the target as the client sent it when that is a valid
// encoding, which decodes to this same path; so "%2e%2e" is seen here as the
// ".." it is upstream, and what a server decoding twice would see is ruled
// out by refusing any "%" left after the first decoding.
func Classify(path string) Service {
	for _, p := range servicePrefixes {
		if strings.HasPrefix(path, p.prefix) {
			if !cleanPath(path) {
				return Unmatched
			}
			return p.service
		}
	}
	return Unmatched
}

// cleanPath reports whether the decoded path means the same thing to every
// server behind Kustom's front door. It refuses:
//   - "." and ".." segments, and empty segments but a trailing one ("//");
//   - the same with a path parameter: Tomcat and other Servlet containers
//     drop ";…" from each segment, so "/..;/" is "/../" there, and "/;x/"
//     an empty segment;
//   - "%": the client sent "%25", as in "%252e%252e", which a server that
//     decodes once more reads as "..";
//   - bytes that are not UTF-8 (overlong "\xc0\xae" is "." to some decoders),
//     control characters (a NUL ends the path for some) and the backslash
//     (a separator for some).
//
// No Kustom API path has any of these: its IDs are UUIDs and references of
// letters, digits and dashes.
func cleanPath(path string) bool {
	ascii := true
	seg, semi := 0, -1 // where the current segment starts, its first ';'
	for i := 0; i <= len(path); i++ {
		c := byte('/') // the end closes the last segment
		if i < len(path) {
			c = path[i]
		}
		switch pathByte[c] {
		case pathOrdinary:
			continue
		case pathRefused:
			return false
		case pathNonASCII:
			ascii = false
		case pathSemicolon:
			if semi < 0 {
				semi = i
			}
		case pathSlash:
			if i > 0 {
				name := path[seg:i]
				if semi >= 0 {
					name = path[seg:semi]
				}
				if name == "." || name == ".." || name == "" && (semi >= 0 || i < len(path)) {
					return false
				}
			}
			seg, semi = i+1, -1
		}
	}
	return ascii || utf8.ValidString(path)
}

// Byte classes for cleanPath's single pass.
const (
	pathOrdinary = iota
	pathRefused
	pathNonASCII
	pathSemicolon
	pathSlash
)

var pathByte = func() (t [256]uint8) {
	for c := 0; c < 0x20; c++ {
		t[c] = pathRefused
	}
	t[0x7f], t['\\'], t['%'] = pathRefused, pathRefused, pathRefused
	for c := utf8.RuneSelf; c < 256; c++ {
		t[c] = pathNonASCII
	}
	t[';'], t['/'] = pathSemicolon, pathSlash
	return t
}()

// Deprecated order-management endpoints: Kustom still answers them but has
// announced their removal, so every call is worth a warning.
const (
	EndpointExtendDueDate        = "extend-due-date"
	EndpointExtendDueDateOptions = "extend-due-date-options"
	EndpointTriggerSendOut       = "trigger-send-out"
)

// DeprecatedEndpoint names the deprecated endpoint a request calls, if any:
// PATCH …/captures/{cid}/extend-due-date, GET …/captures/{cid}/extend-due-date-options,
// POST …/captures/{cid}/trigger-send-out under /ordermanagement/v1/orders/{id}.
func DeprecatedEndpoint(method, path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "/ordermanagement/v1/orders/")
	if !ok {
		return "", false
	}
	// {id}/captures/{cid}/{endpoint}
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	if len(parts) != 4 || parts[1] != "captures" || parts[0] == "" || parts[2] == "" {
		return "", false
	}
	switch {
	case parts[3] == EndpointExtendDueDate && method == "PATCH":
		return EndpointExtendDueDate, true
	case parts[3] == EndpointExtendDueDateOptions && method == "GET":
		return EndpointExtendDueDateOptions, true
	case parts[3] == EndpointTriggerSendOut && method == "POST":
		return EndpointTriggerSendOut, true
	}
	return "", false
}
