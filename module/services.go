package module

import "strings"

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

// Classify maps a request path to its service. A path with dot segments or
// an empty segment is Unmatched whatever its prefix: "/checkout/v3/../../payments/v1/x"
// must not borrow the checkout prefix to reach a Klarna Payments endpoint
// with Kustom credentials.
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

// cleanPath reports whether path has no "." or ".." segment, no "//" and no
// backslash (which some servers read as a separator).
func cleanPath(path string) bool {
	if strings.IndexByte(path, '\\') >= 0 {
		return false
	}
	for i := 0; i < len(path); i++ {
		if path[i] != '/' {
			continue
		}
		rest := path[i+1:]
		switch {
		case strings.HasPrefix(rest, "/"),
			rest == "." || strings.HasPrefix(rest, "./"),
			rest == ".." || strings.HasPrefix(rest, "../"):
			return false
		}
	}
	return true
}

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
