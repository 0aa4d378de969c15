package module

import (
	"bytes"
	"encoding/json"
	"net/http"
)

// Reason is the short machine-readable cause of a refusal: the value of the
// Kustom-Shim-Error header, the kustom_shim_refused_total label and the
// "kustom_refusal" log field. Like smokescreen's reason header, it lets the
// app's developers tell the shim's answers from Kustom's without a log dive.
type Reason string

const (
	ReasonMissingCredentials     Reason = "missing_credentials"
	ReasonMalformedAuthorization Reason = "malformed_authorization"
	ReasonUnknownUsername        Reason = "unknown_username"
	ReasonWrongPassword          Reason = "wrong_password"
	ReasonUnmatchedPath          Reason = "unmatched_path"
	ReasonUnknownTarget          Reason = "unknown_target"
	ReasonUpstreamUnreachable    Reason = "upstream_unreachable"
	ReasonUpstreamTimeout        Reason = "upstream_timeout"
	ReasonRequestTooLarge        Reason = "request_too_large"
	ReasonBadRequestBody         Reason = "bad_request_body"
	ReasonResponseTooLarge       Reason = "response_too_large"
	ReasonConnectRefused         Reason = "connect_refused"
	ReasonProxyRefused           Reason = "proxy_refused"
	ReasonProxyAuthRequired      Reason = "proxy_auth_required"
	ReasonTooManyRequests        Reason = "too_many_requests"
	ReasonHeadersTooLarge        Reason = "headers_too_large"
	ReasonUpgradeRefused         Reason = "upgrade_refused"
)

// ErrorHeader carries the Reason on every answer the shim makes itself.
const ErrorHeader = "Kustom-Shim-Error"

// CorrelationHeader is the header Klarna and Kustom put on every answer; some
// client libraries warn when it is missing, so refusals carry one too.
const CorrelationHeader = "Klarna-Correlation-Id"

type refusalKind struct {
	status  int
	code    string // Klarna-style error_code
	message string
}

var refusals = map[Reason]refusalKind{
	ReasonMissingCredentials: {http.StatusUnauthorized, "UNAUTHORIZED",
		"kustom-shim: no Basic credentials; send the Klarna API username and password this shim is configured with"},
	ReasonMalformedAuthorization: {http.StatusUnauthorized, "UNAUTHORIZED",
		"kustom-shim: the Authorization header is not Basic base64(username:password)"},
	ReasonUnknownUsername: {http.StatusUnauthorized, "UNAUTHORIZED",
		"kustom-shim: no credential is configured for this Klarna username"},
	ReasonWrongPassword: {http.StatusUnauthorized, "UNAUTHORIZED",
		"kustom-shim: wrong password for this Klarna username"},
	ReasonUnmatchedPath: {http.StatusForbidden, "FORBIDDEN",
		"kustom-shim: this path is not a Kustom API (checkout, order management, settlement, HPP, customer token); " +
			"Klarna Payments and other Klarna products stay with Klarna: set `unmatched passthrough <url>` to send them there"},
	ReasonUnknownTarget: {http.StatusMisdirectedRequest, "MISDIRECTED_REQUEST",
		"kustom-shim: this host is not a Klarna or Kustom API host the shim maps"},
	ReasonRequestTooLarge: {http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE",
		"kustom-shim: the request body is larger than max_request_body (Klarna's and Kustom's limit is 1 MB)"},
	ReasonBadRequestBody: {http.StatusBadRequest, "BAD_VALUE",
		"kustom-shim: the request body could not be read"},
	ReasonResponseTooLarge: {http.StatusBadGateway, "BAD_GATEWAY",
		"kustom-shim: the upstream's JSON answer is too large to rewrite its API URLs (limit 8 MiB)"},
	ReasonConnectRefused: {http.StatusForbidden, "FORBIDDEN",
		"kustom-shim: CONNECT is accepted only for mapped Klarna and Kustom API hosts on port 443, with intercept_connect; the shim opens no tunnels"},
	ReasonProxyRefused: {http.StatusForbidden, "FORBIDDEN",
		"kustom-shim: as a proxy, the shim serves only mapped Klarna and Kustom API hosts"},
	ReasonProxyAuthRequired: {http.StatusProxyAuthRequired, "PROXY_AUTHENTICATION_REQUIRED",
		"kustom-shim: this gateway needs Proxy-Authorization"},
	ReasonTooManyRequests: {http.StatusTooManyRequests, "TOO_MANY_REQUESTS",
		"kustom-shim: too busy for this request (the credential's max_concurrent requests are in flight, or every password-hash slot is taken); retry shortly"},
	ReasonHeadersTooLarge: {http.StatusRequestHeaderFieldsTooLarge, "REQUEST_HEADER_FIELDS_TOO_LARGE",
		"kustom-shim: the request headers are larger than max_request_headers"},
	ReasonUpgradeRefused: {http.StatusBadRequest, "BAD_VALUE",
		"kustom-shim: protocol upgrades (WebSocket, h2c) are not part of the Klarna API and are not forwarded"},
	ReasonUpstreamUnreachable: {http.StatusBadGateway, "BAD_GATEWAY",
		"kustom-shim: the upstream API could not be reached"},
	ReasonUpstreamTimeout: {http.StatusGatewayTimeout, "GATEWAY_TIMEOUT",
		"kustom-shim: the upstream API did not answer in time"},
}

// Status is the HTTP status of a refusal for reason.
func (r Reason) Status() int {
	if k, ok := refusals[r]; ok {
		return k.status
	}
	return http.StatusInternalServerError
}

// errorBody is the error shape Klarna's and Kustom's client libraries parse.
type errorBody struct {
	ErrorCode     string   `json:"error_code"`
	ErrorMessages []string `json:"error_messages"`
	CorrelationID string   `json:"correlation_id"`
}

// WriteRefusal answers a request the shim will not forward, in the shape a
// Klarna client library already understands. A non-empty detail (why an
// upstream failed) follows the reason's message in error_messages.
func WriteRefusal(w http.ResponseWriter, reason Reason, correlationID string, detail ...string) {
	k, ok := refusals[reason]
	if !ok {
		k = refusalKind{http.StatusInternalServerError, "INTERNAL_ERROR", "kustom-shim: internal error"}
	}
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false) // the messages quote Caddyfile syntax such as <url>
	messages := []string{k.message}
	for _, d := range detail {
		if d != "" {
			messages = append(messages, "kustom-shim: "+d)
		}
	}
	_ = enc.Encode(errorBody{ErrorCode: k.code, ErrorMessages: messages, CorrelationID: correlationID})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set(ErrorHeader, string(reason))
	h.Set(CorrelationHeader, correlationID)
	h.Set("Cache-Control", "no-store")
	switch k.status {
	case http.StatusUnauthorized:
		h.Set("Www-Authenticate", `Basic realm="kustom-shim"`)
	case http.StatusProxyAuthRequired:
		h.Set("Proxy-Authenticate", `Basic realm="kustom-shim"`)
	case http.StatusTooManyRequests:
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(k.status)
	_, _ = w.Write(body.Bytes())
}
